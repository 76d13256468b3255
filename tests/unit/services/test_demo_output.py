"""cardiowatch demo: the README shows its output as it prints it; its screenshot stays out of git."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from services import demo

REPO_ROOT = Path(__file__).resolve().parents[3]
_ALERT = re.compile(r"^  ALERT  (?P<patient_id>\S+)  (?P<condition>\S+) +(?P<priority>\S+) +(?P<action>\S+) +"
                    r"(?P<delay>-?[\d.]+) s after onset \((?:(?P<kind>\w+) injected|no injected event)\)  "
                    r"rule: (?P<rule>.*)$")


def _readme_demo_block() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("What `make demo` shows:")
    block = re.search(r"```\n(.*?)```", text[start:], flags=re.DOTALL)
    assert block, "no output block after 'What `make demo` shows:'"
    return block.group(1).splitlines()


def test_readme_alert_lines_are_what_the_demo_prints() -> None:
    lines = [line for line in _readme_demo_block() if line.startswith("  ALERT")]
    assert lines
    shown = set()
    for line in lines:
        m = _ALERT.match(line)
        assert m, f"not a line the demo prints: {line!r}"
        body = {k: m.group(k) for k in ("patient_id", "condition", "action", "rule")}
        body["priority"] = m.group("priority").lower()
        assert demo._alert_line(body, float(m.group("delay")), m.group("kind")) == line
        shown.add((m.group("condition"), m.group("action")))
    # every condition an injected event must raise, the ectopy alert a run brings, a clear
    assert {(c, "raised") for c in ("ventricular_run", "pause", "tachycardia")} <= shown
    assert ("frequent_ectopy", "raised") in shown and any(a == "cleared" for _, a in shown)


def test_readme_block_has_the_console_lines_and_the_summary() -> None:
    block = "\n".join(_readme_demo_block())
    assert re.search(r"\] console: http://127\.0\.0\.1:\d+/  \(open it in a browser; acknowledge as "
                     r"demo-nurse with the token \S+\)", block)
    assert "console screenshot written to " in block and "runs/demo/console.png" in block
    assert "downloading" not in block  # the jars were cached: the demo does not say it fetches them
    assert "\nSummary\n" in block and "  OK   p-0002 (vrun)" in block


def test_the_screenshot_goes_to_the_demos_output_folder_unless_a_path_is_given(tmp_path: Path) -> None:
    assert demo.parse_args([]).screenshot == REPO_ROOT / "runs" / "demo" / "console.png"
    assert demo.parse_args(["--workdir", str(tmp_path)]).screenshot == tmp_path / "console.png"
    assert demo.parse_args(["--screenshot", "docs/console.png"]).screenshot == Path("docs/console.png")
    assert demo.parse_args(["--no-screenshot"]).screenshot is None
    # runs/ is ignored by git, so a demo run leaves the working tree clean
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/demo/console.png"], cwd=REPO_ROOT)
    assert ignored.returncode == 0
