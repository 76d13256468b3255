"""Process entry points and outside I/O: worker, dispatcher, simulator, CLI, settings, HTTP."""
