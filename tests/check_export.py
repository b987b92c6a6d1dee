"""Fail when the library in tq_nb/ is not what the notebooks export (someone edited tq_nb/*.py by hand,
or forgot nbdev_export). Exports into the working tree and asks git whether anything changed."""
import subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nbdev_export = Path(sys.executable).parent/'nbdev_export'
subprocess.run([str(nbdev_export)], cwd=root, check=True)
if (root/'.git').exists():
    diff = subprocess.run(['git', 'status', '--porcelain', '--', 'tq_nb'], cwd=root, capture_output=True, text=True).stdout
    if diff.strip():
        sys.exit(f'tq_nb/ is out of sync with nbs/ (run nbdev_export and commit):\n{diff}')
print('tq_nb/ is in sync with the notebooks')
