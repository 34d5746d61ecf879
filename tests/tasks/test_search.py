"""wiki_search: BM25 over the bundled corpus and a user corpus, its cache, and clear errors."""

import json
import shutil

import pytest

from mtgrpo.registry import _load_rewards_package
from mtgrpo.tasks import search
from mtgrpo.tasks.search import build_wiki_search
from mtgrpo.tasks.tools import call_tool

normalize_answer = _load_rewards_package().triviaqa.normalize_answer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTGRPO_CACHE", str(tmp_path / "cache"))


def _questions():
    with open(search.ASSETS / "trivia_qa_sample.jsonl") as f:
        return [json.loads(line) for line in f]


def test_bm25_finds_the_answer_article_for_every_bundled_question():
    wiki_search = build_wiki_search("bm25", "wiki-sample", top_k=1, max_chars=1000)
    assert wiki_search.__name__ == "wiki_search"
    for row in _questions():
        result = normalize_answer(wiki_search(row["question"]))
        aliases = row["answer"]["normalized_aliases"]
        assert any(f" {a} " in f" {result} " for a in aliases), (row["question"], result[:80])


def test_bm25_returns_the_right_document_top_k_and_truncation(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        {"title": "Nile", "text": "The Nile is the longest river in Africa."},
        {"title": "Amazon", "text": "The Amazon river carries the most water."},
        {"title": "Alps", "text": "The Alps are mountains in Europe."},
    ]
    corpus.write_text("\n".join(map(json.dumps, docs)) + "\n")
    assert (
        build_wiki_search("bm25", str(corpus))("longest river in Africa")
        == "Nile\nThe Nile is the longest river in Africa."
    )
    two = build_wiki_search("bm25", str(corpus), top_k=2)("river")
    assert two.count("\n\n") == 1 and "Alps" not in two  # only documents that match a query term
    assert build_wiki_search("bm25", str(corpus), max_chars=10)("Alps mountains") == "Alps\nThe A"
    assert build_wiki_search("bm25", str(corpus))("zebra") == "No matching article found."


def test_bm25_index_is_built_once_per_corpus_content(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"title": "A", "text": "alpha beta"}) + "\n")
    build_wiki_search("bm25", str(corpus))
    cached = list((tmp_path / "cache" / "bm25").iterdir())
    assert len(cached) == 1

    def no_rebuild(*args):
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(search, "_build_index", no_rebuild)
    assert build_wiki_search("bm25", str(corpus))("alpha") == "A\nalpha beta"
    copy = tmp_path / "copy.jsonl"
    shutil.copy(corpus, copy)  # same content elsewhere: same index
    build_wiki_search("bm25", str(copy))
    corpus.write_text(json.dumps({"title": "B", "text": "gamma"}) + "\n")  # new content: a new index
    with pytest.raises(AssertionError, match="cached index"):
        build_wiki_search("bm25", str(corpus))


def test_empty_query_is_a_tool_error_not_a_crash():
    wiki_search = build_wiki_search("bm25", "wiki-sample")
    result = call_tool({"wiki_search": wiki_search}, "wiki_search", {"query": "  "}, timeout=5)
    assert result.error == "exception" and "non-empty" in result.content


def test_corpus_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="wiki-sample"):
        build_wiki_search("bm25", str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(ValueError, match='line 1.*"text"'):
        build_wiki_search("bm25", str(bad))
    with pytest.raises(ValueError, match="search_backend"):
        build_wiki_search("elastic")


def test_pyserini_without_java_or_package_says_how_to_get_them():
    # On this machine one of the two is missing; either way the error names pyserini and the fix.
    with pytest.raises((RuntimeError, ImportError), match=r"(?s)pyserini.*(openjdk|pip install)"):
        build_wiki_search("pyserini")


def test_index_download_runs_once_per_machine(tmp_path):
    """Four real processes race for the Pyserini index as training processes do; the download (a stand-in:
    the real one is ~10 GB and needs Java) must run once, and every process must get the finished index."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    worker = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        from mtgrpo.tasks.search import once_per_machine

        index = Path({str(tmp_path / "index")!r})

        def download():
            if not (index / "done").is_file():
                with open({str(tmp_path / "downloads.log")!r}, "a") as log:
                    log.write(f"{{os.getpid()}}\\n")
                index.mkdir(exist_ok=True)
                time.sleep(1.0)  # a long download that another process must not start beside
                (index / "done").write_text("ok")
            return str(index)

        path = once_per_machine("index-test", download, lock_dir=Path({str(tmp_path)!r}))
        print((Path(path) / "done").read_text())
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [
        subprocess.Popen([sys.executable, "-c", worker], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert all(out.strip() == "ok" for out in outputs)
    assert len((tmp_path / "downloads.log").read_text().splitlines()) == 1
