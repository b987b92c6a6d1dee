"""The documentation site in a real browser: build it (`.ci/build_docs.py`), serve `_docs/` on localhost, open
every page in Debian's headless Chromium (driven over the Chrome DevTools Protocol) and check what a reader
would meet: no console errors, nothing fetched from the internet, no broken internal links, the sidebar in
notebook order, a working search box, the API reference of the quantize and binarize chapters, and
screenshots of the home page and a chapter (saved in tests/screenshots/) that are not blank."""
import base64, http.server, io, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time
import urllib.error, urllib.parse, urllib.request
from functools import partial
from pathlib import Path
import pytest

# one worker builds and serves the site for all of these tests (`make test` runs pytest-xdist with --dist loadgroup)
pytestmark = pytest.mark.xdist_group("docs")

root = Path(__file__).resolve().parent.parent
site = root/'_docs'
shots = Path(__file__).resolve().parent/'screenshots'
CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--hide-scrollbars', '--mute-audio', '--window-size=1280,900']
# The main names each chapter's API reference must show (checked once the chapter exists).
API = {'quantize': ['quantize_', 'QuantLinear'], 'binarize': ['binarize_', 'BinaryLinear', 'ir_net_t']}

def chapter(module):
    "The notebook `NN_module.ipynb` in nbs/, or None while nobody has written it."
    return next((p for p in sorted((root/'nbs').glob('*.ipynb')) if re.fullmatch(rf'\d+[a-z]?_{module}', p.stem)), None)

def page_of(stem):
    "The page nbdev (and Quarto) make of a notebook: its name without the number, `02_quantize` → `quantize.html`."
    return re.sub(r'^\d+[a-z]?[_-]', '', stem) + '.html'

def numbered_stems():
    nbs = [p for p in (root/'nbs').glob('*.ipynb') if re.match(r'\d+', p.name)]
    return [p.stem for p in sorted(nbs, key=lambda p: (int(re.match(r'\d+', p.name).group()), p.name))]

# ---- the site, served on localhost ------------------------------------------------------------------------
@pytest.fixture(scope='module')
def built():
    r = subprocess.run([sys.executable, str(root/'.ci'/'build_docs.py')], cwd=root, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f'building the docs failed:\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}'
    return site

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args): pass
    def log_request(self, code='-', size='-'):
        self.server.statuses.append((self.path, int(code) if str(code).isdigit() else code))

class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError): super().handle_error(request, client_address)

@pytest.fixture(scope='module')
def server(built):
    httpd = _Server(('127.0.0.1', 0), partial(_Handler, directory=str(built)))
    httpd.statuses = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()

# ---- Chromium over the DevTools Protocol ------------------------------------------------------------------
class Chromium:
    "A headless Chromium with a fresh profile and one tab, driven over the DevTools Protocol."
    def __init__(self, exe=CHROMIUM, timeout=30):
        from websockets.sync.client import connect
        self.profile = tempfile.mkdtemp(prefix='tq_nb-chromium-')
        self.proc = subprocess.Popen([exe, *FLAGS, f'--user-data-dir={self.profile}', '--remote-debugging-port=0',
                                      'about:blank'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        port_file, t0 = Path(self.profile)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.time()-t0 > timeout:
                self.close(); raise RuntimeError(f'{exe} did not start (exit code {self.proc.poll()})')
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=timeout))
        ws = next(t['webSocketDebuggerUrl'] for t in targets if t['type'] == 'page')
        self.conn = connect(ws, max_size=None, open_timeout=timeout)
        self.ws, self.next_id, self.events, self.timeout = self.conn.__enter__(), 0, [], timeout
        for domain in ('Page', 'Runtime', 'Log', 'Network'): self.send(f'{domain}.enable')
        self.send('Emulation.setDeviceMetricsOverride', width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def _recv(self, deadline):
        msg = json.loads(self.ws.recv(timeout=max(deadline-time.time(), 0.01)))
        if 'id' not in msg: self.events.append(msg)
        return msg

    def send(self, method, **params):
        "Call a DevTools method and return its result."
        self.next_id += 1
        self.ws.send(json.dumps({'id': self.next_id, 'method': method, 'params': params}))
        deadline = time.time() + self.timeout
        while True:
            msg = self._recv(deadline)
            if msg.get('id') == self.next_id:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg['result']

    def wait_for(self, event):
        deadline = time.time() + self.timeout
        while not any(e['method'] == event for e in self.events): self._recv(deadline)

    def js(self, expr):
        "Value of a JavaScript expression in the page (awaited if it is a promise)."
        r = self.send('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr}: {r["exceptionDetails"]}')
        return r['result'].get('value')

    def open(self, url):
        "Load `url` and return the events of the load (console, exceptions, log, network)."
        self.events = []
        self.send('Page.navigate', url=url)
        self.wait_for('Page.loadEventFired')
        self.js('new Promise(r => requestAnimationFrame(() => setTimeout(r, 200)))')  # let the theme's scripts run
        return list(self.events)

    def screenshot(self, path):
        png = base64.b64decode(self.send('Page.captureScreenshot', format='png')['data'])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def close(self):
        if hasattr(self, 'conn'): self.conn.__exit__(None, None, None)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired: os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f'{CHROMIUM} is missing: install Debian\'s chromium (bash .ci/setup --browser, or as root: '
                    'apt-get install --no-install-recommends chromium)')
    b = Chromium()
    yield b
    b.close()

def _problems(events, base):
    "Console errors, uncaught exceptions, failed loads and requests that leave localhost, from page events."
    errors, remote = [], []
    for e in events:
        m, p = e['method'], e['params']
        if m == 'Runtime.exceptionThrown':
            d = p['exceptionDetails']; errors.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
        elif m == 'Runtime.consoleAPICalled' and p['type'] in ('error', 'assert'):
            errors.append('console.error: ' + ' '.join(str(a.get('value', a.get('description'))) for a in p['args']))
        elif m == 'Log.entryAdded' and p['entry']['level'] == 'error':
            errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == 'Network.responseReceived' and p['response']['status'] >= 400:
            errors.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif m == 'Network.loadingFailed' and not p.get('canceled'):
            errors.append(f"load failed ({p['errorText']}): request {p['requestId']}")
        elif m == 'Network.requestWillBeSent':
            url = p['request']['url']
            if not (url.startswith(base) or url.split(':')[0] in ('data', 'blob', 'about')): remote.append(url)
    return errors, remote

@pytest.fixture(scope='module')
def visits(server, browser):
    "Open every page of the site once; what each page showed, said and linked to."
    httpd, base = server
    pages = sorted(p.name for p in site.glob('*.html') if p.name != '404.html')
    out = {}
    for name in pages:
        events = browser.open(base + name)
        errors, remote = _problems(events, base)
        out[name] = dict(errors=errors, remote=remote,
            links=browser.js('[...document.querySelectorAll("a[href]")].map(a => a.href)'),
            ids=browser.js('[...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.name)'),
            nav=browser.js('[...document.querySelectorAll("nav.md-nav--primary > ul > li > a")]'
                           '.map(a => a.getAttribute("href"))'),
            api=browser.js('[...document.querySelectorAll(".jp-OutputArea-output h2, .jp-OutputArea-output h3,'
                           ' .jp-OutputArea-output h4")].map(h => h.textContent.replace("¶", "").trim())'),
            text=browser.js('document.querySelector("article") ? document.querySelector("article").innerText : ""'),
            code=browser.js('[...document.querySelectorAll(".jp-CodeCell .jp-InputArea")].map(e => e.innerText)'),
            broken_images=browser.js('[...document.images].filter(i => !(i.complete && i.naturalWidth > 0))'
                                     '.map(i => i.src.slice(0, 100))'))
    return base, out, sorted({p for p, code in httpd.statuses if code == 404})

# ---- the checks ----------------------------------------------------------------------------------------
def test_every_notebook_is_a_page(built):
    for stem in ['index', 'design'] + numbered_stems():
        page = page_of(stem)
        assert (built/page).exists(), f'nbs/{stem}.ipynb has no page {page} in _docs/'

def test_pages_load_without_console_errors(visits):
    base, out, not_found = visits
    bad = {p: v['errors'] for p, v in out.items() if v['errors']}
    assert not bad, f'console errors: {json.dumps(bad, indent=1)}'
    assert not not_found, f'the pages asked the server for missing files: {not_found}'
    empty = [p for p, v in out.items() if len(v['text']) < 200]
    assert not empty, f'pages with (almost) no text: {empty}'
    images = {p: v['broken_images'] for p, v in out.items() if v['broken_images']}
    assert not images, f'images that did not load: {images}'

def exports_api(nb):
    "Whether notebook `nb` exports a public function or class (so its page must show API docs)."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    src = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
    return any(re.match(r'\s*#\|\s*exports?\b', s) and re.search(r'^(def|class) [A-Za-z]', s, re.M) for s in src)

def test_nbdev_directives_honoured(visits):
    "Hidden cells (and directives) do not show; every chapter that exports code shows its API reference."
    base, out, not_found = visits
    leaks = {p: [c for c in v['code'] if re.search(r'^\s*#\||nbdev_export\(\)', c, re.M)][:3] for p, v in out.items()}
    leaks = {p: l for p, l in leaks.items() if l}
    assert not leaks, f'hidden cells or nbdev directives visible: {leaks}'
    no_api = [s for s in numbered_stems() if exports_api(root/'nbs'/f'{s}.ipynb')
              and not out[page_of(s)]['api']]
    assert not no_api, f'chapters that export code but show no API reference: {no_api}'

def test_nothing_fetched_from_the_internet(visits):
    base, out, not_found = visits
    remote = {p: v['remote'] for p, v in out.items() if v['remote']}
    assert not remote, f'pages requested URLs outside localhost: {json.dumps(remote, indent=1)}'

def test_internal_links_resolve(visits):
    base, out, not_found = visits
    broken = []
    for page, v in out.items():
        for href in set(v['links']):
            if not href.startswith(base): continue
            url, frag = urllib.parse.urldefrag(href)
            target = url[len(base):] or 'index.html'
            try: urllib.request.urlopen(url, timeout=10).close()
            except urllib.error.HTTPError as e: broken.append(f'{page} → {href}: HTTP {e.code}'); continue
            if frag and target in out and urllib.parse.unquote(frag) not in out[target]['ids']:
                broken.append(f'{page} → {href}: no #{frag} on {target}')
    assert not broken, 'broken internal links:\n' + '\n'.join(sorted(broken))

def test_sidebar_follows_notebook_order(visits):
    base, out, not_found = visits
    want = ['index.html', 'design.html'] + [page_of(s) for s in numbered_stems()]
    assert out['index.html']['nav'] == want

def test_search_box_finds_a_chapter(server, browser):
    httpd, base = server
    browser.open(base + 'index.html')
    assert browser.js('!!document.querySelector("input.md-search__input")'), 'no search box'
    browser.js('document.querySelector("input.md-search__input").focus()')
    browser.send('Input.insertText', text='attention')
    hits = []
    for _ in range(50):
        hits = browser.js('[...document.querySelectorAll(".md-search-result__item a")].map(a => a.getAttribute("href"))')
        if hits: break
        time.sleep(0.1)
    assert any('transformer.html' in h for h in hits), f'searching "attention" found {hits}'

@pytest.mark.parametrize('module', sorted(API))
def test_api_reference_shows_main_functions(visits, module):
    if chapter(module) is None: pytest.skip(f'nbs/NN_{module}.ipynb is not written yet')
    base, out, not_found = visits
    page = page_of(chapter(module).stem)
    missing = [n for n in API[module] if n not in out[page]['api']]
    assert not missing, f'{page} API reference lacks {missing}; it shows {out[page]["api"]}'

def _not_blank(png):
    from PIL import Image, ImageStat
    im = Image.open(io.BytesIO(png)).convert('L')
    return ImageStat.Stat(im).stddev[0], len(im.getcolors(1 << 16) or [])

def test_screenshots_not_blank(server, browser, visits):
    httpd, base = server
    chap = next((page_of(c.stem) for c in map(chapter, API) if c), 'transformer.html')
    for name, page in (('home', 'index.html'), ('chapter', chap)):
        browser.open(base + page)
        std, colours = _not_blank(browser.screenshot(shots/f'{name}.png'))
        assert std > 10 and colours > 16, f'{name} screenshot ({page}) looks blank: std {std:.1f}, {colours} grey levels'
