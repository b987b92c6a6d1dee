"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which is not always available).

Markdown cells are copied; code cells that are not `#| hide` are shown with their text, markdown or
HTML outputs; nbdev directives are dropped. Links to chapters (`[x](01_name.ipynb)`) point into `nbs/`, where
the notebooks are, since README.md sits at the top of the repository.
"""
import json, re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/'nbs'/'index.ipynb').read_text())
directive = re.compile(r'^\s*#\|')
out = []
for cell in nb['cells']:
    src = ''.join(cell['source'])
    flags = {l.strip()[2:].strip() for l in src.splitlines() if directive.match(l)}
    body = '\n'.join(l for l in src.splitlines() if not directive.match(l)).strip()
    if cell['cell_type'] == 'markdown':
        out.append(body); continue
    if 'hide' in flags or cell['cell_type'] != 'code': continue
    if body and 'hide_input' not in flags and 'echo: false' not in flags: out.append(f'```python\n{body}\n```')
    for o in cell.get('outputs', []):
        data = o.get('data', {})
        if o.get('output_type') == 'stream': out.append('```\n' + ''.join(o['text']).rstrip() + '\n```')
        elif 'text/markdown' in data: out.append(''.join(data['text/markdown']).strip())
        elif 'text/html' in data: out.append(''.join(data['text/html']).strip())
        elif 'text/plain' in data: out.append('```\n' + ''.join(data['text/plain']).rstrip() + '\n```')
text = re.sub(r'\]\((\w+\.ipynb)(#[^)]*)?\)', r'](nbs/\1\2)', '\n\n'.join(out))
text = '<!-- generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n' + text + '\n'
(root/'README.md').write_text(text)
print(f'README.md written ({len(text)} characters)')
