"""`wiki_search(query)`, the search tool of the TriviaQA tool episode, over one of two backends.

    search = build_wiki_search("bm25", corpus="wiki-sample", top_k=1, max_chars=1000)
    search("Which planet is called the Red Planet?")      # "Mars\\nMars is the fourth planet ..."

- bm25 (default): bm25s over a local JSONL corpus of {"title", "text"} documents. The index is built once per
  corpus content and cached under `$MTGRPO_CACHE/bm25/<hash of the file>` (mtgrpo.models.cache_dir()).
  `wiki-sample` names the small corpus bundled with mtgrpo.
- pyserini: Pyserini's prebuilt `wikipedia-kilt-doc` Lucene index, as MT-GRPO uses (Java 21, ~10 GB download
  into $PYSERINI_CACHE, default ~/.cache/pyserini, on first use): pip install "mtgrpo[pyserini]". The download
  runs once per machine under a file lock (`fetch_pyserini_index`); the other processes wait and open it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..models import cache_dir

BUNDLED_CORPUS = "wiki-sample"
PYSERINI_INDEX = "wikipedia-kilt-doc"
ASSETS = Path(__file__).resolve().parent / "assets"
_INDEX_FORMAT = 1  # bump when the tokenisation below changes, so old cached indexes are not reused


@dataclass(frozen=True)
class Document:
    title: str
    text: str


class BM25Index:
    """bm25s over a JSONL corpus; English stopwords removed, no stemming (PyStemmer is not a dependency)."""

    def __init__(self, corpus: str | Path):
        try:
            import bm25s
        except ImportError as err:
            raise ImportError("search_backend: bm25 needs bm25s: pip install 'mtgrpo[search]'.") from err
        self._bm25s = bm25s
        path = resolve_corpus(corpus)
        self.documents = _read_corpus(path)
        key = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}-v{_INDEX_FORMAT}"
        index_dir = cache_dir() / "bm25" / key
        if not (index_dir / "params.index.json").exists():
            _build_index(bm25s, self.documents, index_dir)
        self.retriever = bm25s.BM25.load(str(index_dir), show_progress=False)

    def search(self, query: str, k: int) -> list[Document]:
        tokens = self._bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)
        k = min(k, len(self.documents))
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        # Score 0 means no query term occurs in the document: not a match, however it ranks.
        return [self.documents[i] for i, s in zip(indices[0], scores[0], strict=True) if s > 0]


JAVA_FIX = (
    "install JDK 21 (apt-get install openjdk-21-jdk-headless, or conda install -c conda-forge openjdk=21) "
    "and set JAVA_HOME"
)


def java_problem() -> tuple[str | None, str]:
    """(what is wrong with this machine's Java for Pyserini or None, what was found); `mtgrpo doctor` reports it."""
    java = shutil.which("java")
    if java is None:
        return "not found; search_backend: pyserini needs Java 21", ""
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    major = int(match.group(1)) if match else 0
    if major == 1 and match.group(2):  # "1.8.0" style
        major = int(match.group(2))
    if major < 21:
        return f"Java {major or '?'} at {java}; Pyserini needs Java 21", ""
    return None, f"Java {major} at {java}"


class PyseriniIndex:
    """Pyserini's prebuilt Lucene index of the KILT Wikipedia dump (one document per article)."""

    def __init__(self, index_name: str = PYSERINI_INDEX):
        problem, _ = java_problem()
        if problem:
            raise RuntimeError(f"search_backend: pyserini: {problem}. Fix: {JAVA_FIX}.")
        try:
            from pyserini.search.lucene import LuceneSearcher
        except ImportError as err:
            raise ImportError(
                "search_backend: pyserini needs the pyserini package: pip install 'mtgrpo[pyserini]' (and Java 21: "
                "apt-get install openjdk-21-jdk-headless, or conda install -c conda-forge openjdk=21). Or use "
                "search_backend: bm25 with a local search_corpus."
            ) from err
        self.searcher = LuceneSearcher(fetch_pyserini_index(index_name))

    def search(self, query: str, k: int) -> list[Document]:
        try:
            hits = self.searcher.search(query, k=k)
            return [_kilt_document(self.searcher.doc(hit.docid).raw()) for hit in hits]
        finally:
            # Tools run on short-lived threads; pyjnius attaches each one to the JVM and it must be detached
            # before the thread ends, or the JVM keeps a reference per call.
            if threading.current_thread() is not threading.main_thread():
                import jnius

                jnius.detach()


def pyserini_cache() -> Path:
    """Where Pyserini keeps its indexes: $PYSERINI_CACHE, or ~/.cache/pyserini as Pyserini itself defaults."""
    return Path(os.environ.get("PYSERINI_CACHE", Path.home() / ".cache" / "pyserini"))


def once_per_machine(name: str, fetch: Callable[[], str], lock_dir: Path | None = None) -> str:
    """Run `fetch` (a download that returns a path) under an exclusive file lock named `name`: with 8 training
    processes on a node the first downloads, the others wait and then get the finished path from their own
    `fetch`, which finds it in place. Without the lock they all download into one directory at once."""
    from filelock import FileLock

    lock_dir = lock_dir or pyserini_cache()
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f".{name}.lock")):
        return fetch()


def fetch_pyserini_index(index_name: str = PYSERINI_INDEX) -> str:
    """Local path of a Pyserini prebuilt index, downloaded into pyserini_cache() once per machine."""

    def download() -> str:
        from pyserini.util import download_prebuilt_index

        return download_prebuilt_index(index_name, verbose=False)

    return once_per_machine(f"index-{index_name}", download)


def build_wiki_search(
    backend: str, corpus: str = BUNDLED_CORPUS, top_k: int = 1, max_chars: int = 1000
) -> Callable:
    """The `wiki_search` tool over `backend` ("bm25" or "pyserini"); the index is loaded now, not on the first call,
    so that loading never counts against a call's timeout."""
    if backend == "bm25":
        index = BM25Index(corpus)
    elif backend == "pyserini":
        index = PyseriniIndex()
    else:
        raise ValueError(f"Unknown search_backend {backend!r}; use 'bm25' or 'pyserini'.")

    def wiki_search(query: str) -> str:
        """Searches Wikipedia and returns the text of the best matching article.

        Args:
            query: What to look up, e.g. a name, a place or a short description.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        documents = index.search(query, top_k)
        if not documents:
            return "No matching article found."
        return "\n\n".join(f"{d.title}\n{d.text}" if d.title else d.text for d in documents)[:max_chars]

    return wiki_search


def resolve_corpus(corpus: str | Path) -> Path:
    if str(corpus) == BUNDLED_CORPUS:
        return ASSETS / "wiki_corpus.jsonl"
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"search_corpus {str(corpus)!r} does not exist (relative paths start from {Path.cwd()}). Pass a JSONL "
            f'file of {{"title", "text"}} documents, \'{BUNDLED_CORPUS}\' for the bundled corpus, or use '
            "search_backend: pyserini for Wikipedia."
        )
    return path


def _read_corpus(path: Path) -> list[Document]:
    documents = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(
                    f'{path} line {number}: each line must be a JSON object with a "text" (and '
                    '"title") string.'
                )
            documents.append(Document(str(row.get("title", "")), row["text"]))
    if not documents:
        raise ValueError(f"Search corpus {path} has no documents.")
    return documents


def _build_index(bm25s, documents: list[Document], index_dir: Path) -> None:
    # Titles are indexed with the text: a query often names the article's subject.
    tokens = bm25s.tokenize([f"{d.title}\n{d.text}" for d in documents], stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    # Written aside and renamed into place, so a crash or a second process never leaves a half-written index.
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}-", dir=index_dir.parent))
    try:
        retriever.save(str(staging), show_progress=False)
        try:
            staging.rename(index_dir)
        except OSError:  # another process finished first; its index is identical
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _kilt_document(raw: str) -> Document:
    # The stored raw document is {"id", "contents"}; MT-GRPO shows the policy `contents` as it is.
    return Document("", json.loads(raw)["contents"])
