"""The tokenizer is reproducible: training renumbers ids in a fixed order (the `tokenizers` trainer alone numbers
them differently in every process), and the vocabularies shipped in tq_nb/tokenizers/ are the ones used."""
import hashlib, os, subprocess, sys
from pathlib import Path
from tq_nb.data import SHIPPED_TOKENIZERS

TRAIN = "import tq_nb.data as D; print(D.train_wordpiece(D.synthetic_text(seed={seed}).train.texts, 150).to_str())"

def train_in_new_process(seed=0):
    return subprocess.run([sys.executable, '-c', TRAIN.format(seed=seed)], capture_output=True, text=True, check=True).stdout

def test_training_gives_the_same_file_in_two_processes():
    assert train_in_new_process() == train_in_new_process()

def test_shipped_vocabulary_is_used_with_an_empty_cache(tmp_path):
    code = ("import hashlib, tq_nb.data as D; sp = D.synthetic_text(); "
            "print(hashlib.sha1(D.get_tokenizer(sp, 256).to_str().encode()).hexdigest())")
    env = {**os.environ, 'TQ_NB_DATA': str(tmp_path)}
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, env=env).stdout.strip()
    shipped = SHIPPED_TOKENIZERS/'synthetic-256-1f0b82272409.json'
    assert out == hashlib.sha1(shipped.read_bytes()).hexdigest()
    assert not any(tmp_path.rglob('*.json'))       # nothing had to be trained or cached
