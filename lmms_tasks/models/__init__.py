"""lmms-eval model wrappers registered by `lmms_tasks.register` (imported lazily by lmms-eval's registry)."""
