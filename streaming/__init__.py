"""Stream core: validation, per-patient windows, scoring pipeline, alert policy; Faust shell."""
