"""The visitor's own guard anchors: the setting, its option, the file's errors, and the guard reading it."""
import argparse
import hashlib

import numpy as np
import pytest

from beacon.config import InjectConfig, add_arguments, from_arguments
from beacon.data.facts import Fact
from beacon.method.anchor_sources import build_anchors
from beacon.method.anchors import MAX_ANCHOR_LINES, read_anchors


class HashEmbedder:
    """A sentence embedder stand-in: the same text, the same unit vector; no model to load."""

    def encode(self, texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64):
        rows = [np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).normal(size=384) for t in texts]
        v = np.array(rows, dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_config_round_trip():
    cfg = InjectConfig().updated(gate="none", anchors_file="/tmp/mine.txt")
    assert InjectConfig.from_dict(cfg.to_dict()).anchors_file == "/tmp/mine.txt"
    assert InjectConfig().anchors_file is None


def test_cli_option_sets_the_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "--anchors" in parser.format_help()
    assert from_arguments(parser.parse_args(["--gate", "none", "--anchors", "mine.txt"])).anchors_file == "mine.txt"
    assert from_arguments(parser.parse_args([])).anchors_file is None


def test_read_anchors(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("# a comment\n\nThe sky is often blue.\nThe capital of Chile is | Santiago.\n", encoding="utf-8")
    assert read_anchors(p) == ["The sky is often blue.", "The capital of Chile is | Santiago."]


@pytest.mark.parametrize("content, words", [
    (None, ["mine.txt", "no such"]),
    (b"fine\nalso fine\nbad \xff byte\n", ["mine.txt", "line 3", "UTF-8"]),
    (b"\n# only a comment\n\n", ["mine.txt", "no anchors"]),
    (b"x" * (2**20 + 1), ["mine.txt", "1 MB"]),
    (b"a line\n" * (MAX_ANCHOR_LINES + 1), ["mine.txt", str(MAX_ANCHOR_LINES)]),
    (b"ok\nThe capital of Chile is | \n", ["mine.txt", "line 2", "prompt | answer"]),
])
def test_bad_anchor_files_name_the_file_and_line(tmp_path, content, words):
    p = tmp_path / "mine.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ValueError) as e:
        read_anchors(p)
    for w in words:
        assert w in str(e.value)


def test_build_anchors_reads_the_visitors_file(tmp_path):
    p = tmp_path / "mine.txt"
    mine = ["Water boils at a hundred degrees.", "The capital of Chile is | Santiago.", "Cats like to sleep."]
    p.write_text("\n".join(mine), encoding="utf-8")
    facts = [Fact(id="f1", prompt="The Zorblat river flows into", target="Lake Quen")]
    # "file" missing from the sources: the file is added, and the model is never asked (no model given)
    cfg = InjectConfig().updated(gate="none", guard_anchors="file", anchors_file=str(p))
    anchors, near, about = build_anchors(None, None, facts, {}, cfg, HashEmbedder())
    assert sorted(anchors) == sorted(mine) and about["file"] == "mine.txt" and about["source"] == "file"
    # an anchor that restates a probe is left out, whichever file it came from
    probe = Fact(id="p1", prompt="The capital of Chile is", target="Santiago")
    anchors, _, about = build_anchors(None, None, facts, {"yours": [probe]}, cfg, HashEmbedder())
    assert "The capital of Chile is | Santiago." not in anchors and about["restating_probes_left_out"] == 1


def test_anchors_file_adds_the_file_source(tmp_path, monkeypatch):
    import beacon.method.anchor_sources as guard

    p = tmp_path / "mine.txt"
    p.write_text("Cats like to sleep.\n", encoding="utf-8")
    monkeypatch.setattr(guard, "sampled_anchors", lambda *a, **k: ["The base model wrote this."])
    cfg = InjectConfig().updated(gate="none", guard_anchors="sampled", anchors_file=str(p))
    anchors, _, about = build_anchors(None, None, [Fact(id="f1", prompt="Zorblat is in", target="Quen")], {}, cfg,
                                      HashEmbedder())
    assert sorted(anchors) == ["Cats like to sleep.", "The base model wrote this."]
    assert about["source"] == "sampled,file"
