"""Write this folder's task YAMLs from lmms_tasks/taskgen.py (the single source of every perpo_* task config).

Run after editing taskgen.py:  python lmms_tasks/tasks/perpo_refcoco/_generate_configs.py
"""

from pathlib import Path

from lmms_tasks.taskgen import write_folder

if __name__ == "__main__":
    written = write_folder("perpo_refcoco", Path(__file__).resolve().parent)
    print(f"wrote {len(written)} files to {Path(__file__).resolve().parent}")
