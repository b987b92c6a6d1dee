"""Build the documentation site into `_docs/` offline, without Quarto.

The notebooks go through nbdev's own docs processing (`nbdev.serve.proc_nbs`, what `nbdev_docs` runs before
Quarto: hidden cells dropped, show_doc cells added after exported code and executed, front matter, doc links)
into `_proc/`. This script then turns Quarto's cell options into what mkdocs-jupyter understands, turns TeX
math into MathML (no script needed to view it) and writes a mkdocs config with the material theme into
`.mkdocs_src/`; mkdocs renders the site. The sidebar lists `index.ipynb`, the design page `design.ipynb`, then every numbered notebook in
`nbs/`, in numeric order, so it grows with each new chapter. The build fails if a page would load a script,
stylesheet, font or image from the internet.

Usage: .venv/bin/python .ci/build_docs.py        (from any folder; `make docs` runs it)
"""
import hashlib, html.parser, json, os, re, shutil, subprocess, sys, warnings
from pathlib import Path

root = Path(__file__).resolve().parent.parent
src_dir = root/'.mkdocs_src'           # generated mkdocs config and the pages it renders (git-ignored)
docs_dir = src_dir/'docs'
site_dir = root/'_docs'

def numbered_notebooks(nbs_path):
    "The notebooks whose names start with a number, in numeric order (`2_x` before `10_y`)."
    nbs = [p for p in Path(nbs_path).glob('*.ipynb') if re.match(r'\d+', p.name)]
    return sorted(nbs, key=lambda p: (int(re.match(r'\d+', p.name).group()), p.name))

def process_notebooks(cfg):
    """Run nbdev's docs processing into `_proc/` (it redoes only notebooks changed since); all of them again when
    the library's symbol index changed, since doc links to other chapters come from it."""
    from nbdev.serve import proc_nbs
    cache, modidx = cfg.config_path/'_proc', cfg.lib_path/'_modidx.py'
    stamp = hashlib.sha1(modidx.read_bytes() if modidx.exists() else b'').hexdigest()
    seen = cache/'.modidx-sha1'
    force = not seen.exists() or seen.read_text() != stamp
    # a relative path: nbdev skips files with a folder starting with '.' anywhere in the path it is given
    try: proc_nbs(os.path.relpath(cfg.nbs_path, cfg.config_path), force=force)
    except Exception as e:
        mixed = '\n'.join(f'  {nb.name} cell {i}: ' + next((l for l in src.splitlines() if not l.startswith('#|')), '')
                          for nb in sorted(cfg.nbs_path.glob('*.ipynb')) for i, src in mixed_import_cells(nb))
        sys.exit(f'build_docs: nbdev could not process the notebooks for the docs:\n{e}\n\n'
                 'nbdev runs the import cells, exported cells and show_doc cells of each notebook on their own; a '
                 'cell that mixes imports with other code is run too and fails without the cells before it: give '
                 'the imports a cell of their own (nbdev FAQ). Cells that mix them:\n' + (mixed or '  none'))
    seen.write_text(stamp)
    return cache

def mixed_import_cells(nb):
    "(index, source) of the code cells of `nb` that nbdev's docs step runs because of an import but hold more."
    import ast
    for i, c in enumerate(json.loads(nb.read_text(encoding='utf-8'))['cells']):
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or 'nbdev_export()' in src: continue
        if re.search(r'^\s*#\|\s*(export|exporti|exports|exec_doc)\b|^\s*#\|\s*eval:\s*false', src, re.M): continue
        try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
        except SyntaxError: continue
        nodes = list(ast.walk(tree))
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in nodes) and \
           any(isinstance(n, (ast.Expr, ast.Assign)) for n in nodes): yield i, src

# ---- from Quarto's dialect to what mkdocs-jupyter renders -------------------------------------------------
_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def split_options(source):
    "Quarto cell options (`#| echo: false`) left by nbdev, and the code without them."
    opts, lines = {}, source.splitlines()
    while lines and _re_opt.match(lines[0]):
        k, v = _re_opt.match(lines.pop(0)).groups()
        opts[k] = v.strip('"\'').lower()
    return opts, '\n'.join(lines)

def front_matter(cell):
    "Title, description and output file from nbdev's front-matter raw cell, or None."
    import yaml
    src = ''.join(cell['source']).strip()
    if cell['cell_type'] != 'raw' or not src.startswith('---'): return None
    return yaml.safe_load(src.strip('-')) or {}

_re_fence = re.compile(r'(^[ \t]*(```|~~~).*?^[ \t]*\2[ \t]*$|`+[^`\n]*?`+)', re.M | re.S)
_re_math = re.compile(r'\$\$(.+?)\$\$|(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])', re.S)

def tex_to_mathml(md):
    "Markdown with `$...$` and `$$...$$` turned into MathML (code spans and fences left alone)."
    from latex2mathml.converter import convert
    def one(m):
        tex, display = (m.group(1), 'block') if m.group(1) is not None else (m.group(2), 'inline')
        try: return convert(tex.strip(), display=display).replace('\n', '')
        except Exception as e:
            warnings.warn(f'TeX not converted ({e}): {tex!r}')
            return f'<code>{tex}</code>'
    out, i = [], 0
    for m in _re_fence.finditer(md):
        out.append(_re_math.sub(one, md[i:m.start()])); out.append(m.group(0)); i = m.end()
    out.append(_re_math.sub(one, md[i:]))
    return ''.join(out)

_re_attr_link = re.compile(r'\[([^\]\n]+)\]\(([^)\s]+)\)\{([^}\n]*)\}')

def pandoc_links(md):
    "Pandoc links with attributes (`[source](url){target=\"_blank\" ...}`, show_doc's) as HTML links."
    def one(m):
        text, url, attrs = m.groups()
        attrs = re.sub(r'style="[^"]*"', '', attrs).strip()
        cls = ' class="doc-source"' if text == 'source' else ''
        return f'<a href="{url}"{cls} {attrs}>{text}</a>'.replace(' >', '>')
    return _re_attr_link.sub(one, md)

def local_links(text, base, pages):
    "Links into the published site (`https://host/base/page.html#x`, nbdev's doc links) made relative."
    def one(m):
        page = m.group(1) or 'index.html'
        return page + (m.group(2) or '') if page in pages else m.group(0)
    return re.sub(re.escape(base) + r'/?([\w.-]+\.html)?(#[\w.\-]*)?', one, text)

def notebook_links(md, pages):
    """Markdown links to a notebook (`[x](01_transformer.ipynb#y)`) point to its page, as Quarto does; a link to a
    notebook not written yet becomes its plain text (with a warning), so readers meet no dead link."""
    def one(m):
        text, nb, frag = m.groups()
        if nb in pages: return f'[{text}]({pages[nb]}{frag or ""})'
        print(f'build_docs: warning: link to {nb}, which does not exist yet, shown as text: {text}')
        return text
    return re.sub(r'\[([^\]\n]*)\]\(\s*(?:\./)?([\w.-]+\.ipynb)(#[^)\s]*)?\s*\)', one, md)

def md_images(md, nb_dir, page_dir, assets):
    "Copy images that markdown refers to by a relative path next to the page, and point to the copy."
    def one(m):
        pre, path, post = m.groups()
        p = (nb_dir/path).resolve()
        if re.match(r'\w+:|/', path) or not p.is_file(): return m.group(0)
        (page_dir/assets).mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, page_dir/assets/p.name)
        return f'{pre}{assets}/{p.name}{post}'
    md = re.sub(r'(!\[[^\]]*\]\()([^)\s]+)(\s*(?:"[^"]*")?\))', one, md)
    return re.sub(r'(<img\s[^>]*src=")([^"]+)(")', one, md)

def text_of(x): return ''.join(x) if isinstance(x, list) else x

def convert_notebook(proc_nb, dest, nb_dir, base, pages):
    "Processed notebook → notebook for mkdocs-jupyter; returns its title. `pages`: notebook name → page."
    site_pages = set(pages.values())
    nb = json.loads(proc_nb.read_text(encoding='utf-8'))
    nb['metadata'].pop('widgets', None)  # widget state would load the widget manager from a CDN
    nb['metadata'].setdefault('kernelspec', {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'})
    cells, title = [], None
    for c in nb['cells']:
        fm = front_matter(c)
        if fm is not None:
            title = fm.get('title', title)
            md = f"# {fm['title']}\n" if 'title' in fm else ''
            if fm.get('description'): md += f"\n> {fm['description']}\n"
            if md: cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': md})
            continue
        src = text_of(c.get('source', ''))
        if c['cell_type'] == 'markdown':
            if src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            src = notebook_links(local_links(pandoc_links(tex_to_mathml(src)), base, site_pages), pages)
            src = md_images(src, nb_dir, dest.parent, 'assets')
        elif c['cell_type'] == 'code':
            opts, src = split_options(src)
            if opts.get('include') == 'false': continue
            tags = c['metadata'].setdefault('tags', [])
            if opts.get('echo') == 'false' or not src.strip(): tags.append('remove_input')
            if opts.get('output') == 'false': c['outputs'] = []
            for o in c.get('outputs', []):
                for mime in ('text/markdown', 'text/html'):
                    if mime in o.get('data', {}):
                        o['data'][mime] = local_links(pandoc_links(text_of(o['data'][mime])), base, site_pages)
            if not src.strip() and not c.get('outputs'): continue
        c['source'] = src
        cells.append(c)
    nb['cells'] = cells
    dest.write_text(json.dumps(nb, indent=1), encoding='utf-8')
    return title

# ---- the site -------------------------------------------------------------------------------------------
EXTRA_CSS = """\
/* show_doc blocks: a rule above each API entry and its source link on the right, as nbdev's Quarto site */
.jupyter-wrapper .jp-RenderedMarkdown hr { margin: 1.5em 0 0.5em; }
.jupyter-wrapper a.doc-source { float: right; font-size: smaller; }
.jupyter-wrapper math[display="block"] { margin: 0.8em 0; }
"""

# ---- a mkdocs hook (mkdocs loads this file as a module for it) ------------------------------------------
_re_md_cell = re.compile(r'<div[^>]*class="jp-Cell jp-MarkdownCell')
_re_cell = re.compile(r'<div[^>]*class="jp-Cell ')

def on_page_context(context, page, config, nav):
    "Point the page's table of contents at the headings' real ids (mkdocs-jupyter slugs them twice, differently)."
    if not page.toc or not page.content: return context
    starts = [m.start() for m in _re_cell.finditer(page.content)] + [len(page.content)]
    md_cells = [page.content[a:b] for a, b in zip(starts, starts[1:]) if _re_md_cell.match(page.content, a)]
    heads = [(i, re.sub(r'<[^>]+>|¶', '', body).strip()) for c in md_cells
             for _, i, body in re.findall(r'<(h[1-6])[^>]*\sid="([^"]+)"[^>]*>(.*?)</\1>', c, re.S)]
    def flat(items): return [x for it in items for x in [it, *flat(it.children)]]
    items = flat(page.toc)
    if len(items) == len(heads): pairs = zip(items, heads)
    else:  # match in order, each entry to the next heading whose id starts with its slug
        pairs, k = [], 0
        for it in items:
            j = next((j for j in range(k, len(heads)) if heads[j][0].startswith(it.id)), None)
            if j is not None: pairs.append((it, heads[j])); k = j + 1
    for it, (i, title) in pairs: it.id, it.title = i, title or it.title
    return context

def mkdocs_config(cfg, nav):
    import yaml
    conf = {
        'site_name': cfg.title, 'site_description': cfg.description,
        'docs_dir': str(docs_dir), 'site_dir': str(site_dir), 'use_directory_urls': False,
        'theme': {'name': 'material', 'font': False, 'language': 'en',
                  'features': ['navigation.top', 'navigation.footer', 'search.highlight', 'toc.follow'],
                  'palette': {'scheme': 'default', 'primary': 'indigo', 'accent': 'indigo'}},
        'extra_css': ['extra.css'],
        'hooks': [str(Path(__file__).resolve())],
        'nav': nav,
        'plugins': ['search', {'mkdocs-jupyter': {
            'execute': False, 'include_source': False, 'no_prompt': True,
            'ignore_h1_titles': True,  # the sidebar shows the nav titles, not each page's h1
            'remove_tag_config': {'remove_input_tags': ['remove_input']},
            'custom_mathjax_url': 'data:,',  # math is MathML already; nothing to fetch
            'cache_dir': str(src_dir/'cache')}}],
        'markdown_extensions': ['toc', 'tables'],
    }
    return yaml.safe_dump(conf, sort_keys=False, allow_unicode=True)

RESOURCE_ATTRS = {('script', 'src'), ('link', 'href'), ('img', 'src'), ('iframe', 'src'), ('source', 'src'),
                  ('source', 'srcset'), ('video', 'src'), ('audio', 'src'), ('embed', 'src'), ('object', 'data'),
                  ('img', 'srcset'), ('image', 'href'), ('use', 'href')}
_re_css_url = re.compile(r'''(?:url\(\s*['"]?|@import\s+['"])\s*((?:https?:)?//[^'")\s]+)''', re.I)
_re_remote = re.compile(r'^\s*(?:https?:)?//', re.I)

class _Resources(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(); self.found, self.in_style = [], False
    def handle_starttag(self, tag, attrs):
        self.in_style = tag == 'style'
        for k, v in attrs:
            if v is None: continue
            if (tag, k) in RESOURCE_ATTRS and _re_remote.match(v):
                if tag == 'link' and dict(attrs).get('rel') in ('canonical', 'alternate'): continue
                self.found.append(f'<{tag} {k}="{v}">')
            if k == 'style': self.found += _re_css_url.findall(v)
    def handle_data(self, data):
        if self.in_style: self.found += _re_css_url.findall(data)
    def handle_endtag(self, tag): self.in_style = False

def remote_resources(site):
    "Every script, stylesheet, font, image or frame URL on the internet that a page of `site` would load."
    bad = []
    for f in sorted(Path(site).rglob('*')):
        if f.suffix == '.html':
            p = _Resources(); p.feed(f.read_text(encoding='utf-8', errors='replace'))
            bad += [f'{f.relative_to(site)}: {u}' for u in p.found]
            if 'class="jp-Mermaid' in f.read_text(encoding='utf-8', errors='replace'):
                bad.append(f'{f.relative_to(site)}: a mermaid diagram (nbconvert loads mermaid.js from a CDN)')
        elif f.suffix == '.css':
            bad += [f'{f.relative_to(site)}: {u}' for u in _re_css_url.findall(f.read_text(encoding='utf-8', errors='replace'))]
    return bad

def build():
    os.chdir(root)
    from nbdev.config import get_config
    cfg = get_config()
    nbs = [cfg.nbs_path/'index.ipynb', cfg.nbs_path/'design.ipynb'] + numbered_notebooks(cfg.nbs_path)
    print(f'build_docs: nbdev processing {len(nbs)} notebooks into _proc/')
    proc = process_notebooks(cfg)
    fms = {}
    for nb in nbs:
        p = proc/nb.name
        if not p.exists(): sys.exit(f'build_docs: nbdev did not process {nb.name}')
        first = json.loads(p.read_text(encoding='utf-8'))['cells'][:1]
        fms[nb] = (first and front_matter(first[0])) or {}
    pages = {nb: fms[nb].get('output-file') or re.sub(r'^\d+[a-z]?[_-]', '', nb.stem) + '.html' for nb in nbs}
    if len(set(pages.values())) < len(pages): sys.exit(f'build_docs: two notebooks give the same page: {pages}')
    shutil.rmtree(src_dir/'docs', ignore_errors=True)
    docs_dir.mkdir(parents=True)
    base = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/')).rstrip('/')
    nav = []
    for nb in nbs:
        dest = docs_dir/(Path(pages[nb]).stem + '.ipynb')
        title = convert_notebook(proc/nb.name, dest, nb.parent, base, {k.name: v for k, v in pages.items()}) or nb.stem
        num = re.match(r'\d+[a-z]?', nb.name)
        nav.append({(f'{num.group()} · {title}' if num else 'Home' if nb.stem == 'index' else title): dest.name})
    (docs_dir/'extra.css').write_text(EXTRA_CSS)
    (src_dir/'mkdocs.yml').write_text(mkdocs_config(cfg, nav))
    print(f'build_docs: mkdocs build into {site_dir.name}/')
    shutil.rmtree(site_dir, ignore_errors=True)
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '-q', '-f', str(src_dir/'mkdocs.yml')],
                   check=True, cwd=src_dir, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    bad = remote_resources(site_dir)
    if bad: sys.exit('build_docs: pages would fetch from the internet:\n' + '\n'.join(bad))
    print(f'build_docs: {len(nav)} pages in {site_dir}/, nothing fetched from the internet')

if __name__ == '__main__': build()
