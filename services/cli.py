"""CLI: the ``cardiowatch`` console command; each subcommand's ``main`` is imported lazily.

Lazy imports keep ``cardiowatch edge run`` free of TensorFlow and make ``--help`` fast;
TensorFlow's start-up notices are kept off the terminal (:mod:`services.quiet_tf`).
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["main", "COMMANDS"]

# subcommand -> (module, help). Nested groups use "group sub".
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("services.demo", "run the whole product locally: broker, worker, dispatcher, simulator, receiver"),
    "worker": ("services.worker", "run the Faust streaming worker"),
    "dispatch": ("services.dispatcher", "run the alert dispatcher and acknowledgement API"),
    "console": ("services.console", "serve the care-team console: live patients, alerts, ECG strips, acknowledge"),
    "simulate": ("services.simulator", "replay WFDB records or synthetic patients into Kafka"),
    "receiver": ("services.receiver", "run a local signed-webhook receiver"),
    "token hash": ("services.access", "hash an acknowledgement token for the routing file (or make a new one)"),
    "broker": ("services.broker", "fetch, start, stop the local Apache Kafka broker"),
    "topics": ("services.topics", "plan | apply: every Kafka topic the system uses, created from the settings"),
    "train ecg": ("models.ecg.train", "train the ECG beat autoencoder into a model bundle"),
    "train hr": ("models.hr.train", "train the heart-rate autoencoder into a model bundle"),
    "train classifier": ("models.ecg.classifier_train",
                         "train an ECG bundle's beat classifier again, optionally with noisy copies of the records"),
    "train vf": ("models.ecg.vf_train", "train the VF/VFL detector and add it to an ECG bundle"),
    "train artefact": ("models.ecg.artefact", "train the artefact (noise) detector and add it to an ECG bundle"),
    "evaluate": ("services.evaluate", "replay WFDB records through the pipeline and report metrics"),
    "subgroups": ("services.subgroups", "add figures by sex and age band (patient-bootstrap intervals) to a report"),
    "crossval": ("services.crossval", "leave-patient-out folds: train a bundle per fold, evaluate held-out patients"),
    "edge run": ("services.edge", "run detection on a record with only the TFLite runtime"),
    "bench stream": ("services.bench_stream", "benchmark the streaming path on the real broker"),
    "bench alerts": ("services.bench_alerts", "benchmark alert delivery to a local receiver"),
    "bench soak": ("services.bench_soak", "soak run: RSS of the worker and the dispatcher over time (--minutes M)"),
    "fuzz": ("services.fuzz", "run the property-based fuzz suite with many cases (--cases N)"),
    "bench core": ("services.bench_core", "benchmark the stream core alone, per ECG chunk"),
}


def _usage() -> str:
    lines = ["usage: cardiowatch <command> [options]", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<14} {text}")
    lines.append("")
    lines.append("Run 'cardiowatch <command> --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    for width in (2, 1):
        name = " ".join(args[:width])
        if name in COMMANDS:
            from streaming.kafka_security import KafkaConnectError

            from services.quiet_tf import quiet_tensorflow

            # the CLI is the edge: TensorFlow's own variable, set for this process and its children
            quiet_tensorflow(os.environ)
            module = importlib.import_module(COMMANDS[name][0])
            try:
                rc = module.main(args[width:])
            except KafkaConnectError as exc:  # bad certificate, password, address: say which
                print(f"cardiowatch {name}: error: cannot use Kafka: {exc}", file=sys.stderr)
                return 3
            return int(rc or 0)
    groups = {n.split()[0] for n in COMMANDS if " " in n}
    if args[0] in groups:
        subs = ", ".join(n.split()[1] for n in COMMANDS if n.startswith(args[0] + " "))
        print(f"cardiowatch {args[0]}: expected one of {subs}, got {' '.join(args[1:2]) or 'nothing'}",
              file=sys.stderr)
    else:
        print(f"cardiowatch: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
