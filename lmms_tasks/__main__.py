"""`python -m lmms_tasks <lmms-eval arguments>`: lmms-eval's own CLI with the perpo tasks and model registered.

The fallback for environments where the `lmms_eval.models` entry point is not installed (a source checkout on
PYTHONPATH, an unusual packaging tool): it applies `lmms_tasks.register` itself, then hands over to lmms-eval.
"""

from __future__ import annotations

import sys


def main() -> None:
    from lmms_tasks import MODEL_CLASS_PATH, MODEL_ID, install_task_hook

    install_task_hook()
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelManifest

    MODEL_REGISTRY_V2.register_manifest(
        ModelManifest(model_id=MODEL_ID, chat_class_path=MODEL_CLASS_PATH), overwrite=True
    )
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    lmms_eval_main()
    _leave_the_process_group()


def _leave_the_process_group() -> None:
    """Under a multi-process launch: wait until every rank is done (rank 0 writes the results last), then close
    torch.distributed's group. lmms-eval leaves it open, and a rank whose gloo group is torn down at interpreter
    exit can abort ("terminate called without an active exception"), which makes the launcher kill rank 0 before
    its results are written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    sys.exit(0)
