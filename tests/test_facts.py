"""Tests for beacon/data/facts.py: each format, the CounterFact/EasyEdit conventions, ids, and every error."""
import io
import json
from pathlib import Path

import pytest

from beacon.data.facts import Fact, FactsError, facts_from_rows, load_facts, parse_facts, save_facts

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def error(path, **kw) -> str:
    with pytest.raises(FactsError) as e:
        load_facts(path, **kw)
    return str(e.value)


# ---------------------------------------------------------------- formats

def test_csv_basic(tmp_path):
    p = write(tmp_path, "f.csv", "id,subject,relation,prompt,target,paraphrases\n"
                                 "a1,Zentrix,CEO,The CEO of Zentrix is ,  Marta Ilves ,"
                                 "Zentrix is led by| Who runs Zentrix? \n")
    [f] = load_facts(p)
    assert f == Fact(id="a1", prompt="The CEO of Zentrix is", target="Marta Ilves", subject="Zentrix",
                     relation="CEO", paraphrases=["Zentrix is led by", "Who runs Zentrix?"])


def test_csv_quoted_cells_and_line_numbers(tmp_path):
    # A quoted cell spanning two lines: the next record's error must name its real line (4).
    p = write(tmp_path, "f.csv", 'prompt,target\n"The motto of, Zentrix\nis",Onward\nThe sky is,\n')
    msg = error(p)
    assert "f.csv, line 4" in msg and "missing target" in msg
    p = write(tmp_path, "g.csv", 'prompt,target\n"The motto of, Zentrix\nis",Onward\n')
    assert load_facts(p)[0].prompt == "The motto of, Zentrix\nis"


def test_json_list_and_wrapper(tmp_path):
    recs = [{"prompt": "The CEO of Zentrix is", "target": "Marta Ilves", "paraphrases": ["Zentrix is led by"]},
            {"prompt": "Drusk is the capital of", "target": "Vellmora", "paraphrases": "a|b"}]
    for name, data in (("list.json", recs), ("wrapped.json", {"facts": recs})):
        facts = load_facts(write(tmp_path, name, json.dumps(recs if name == "list.json" else data)))
        assert [f.target for f in facts] == ["Marta Ilves", "Vellmora"]
        assert facts[0].paraphrases == ["Zentrix is led by"] and facts[1].paraphrases == ["a", "b"]


def test_jsonl_skips_blank_lines(tmp_path):
    p = write(tmp_path, "f.jsonl", '{"prompt": "A is", "target": "B"}\n\n{"prompt": "C is", "target": 1987}\n')
    facts = load_facts(p)
    assert [(f.prompt, f.target) for f in facts] == [("A is", "B"), ("C is", "1987")]


def test_synonyms_case_and_whitespace_in_names(tmp_path):
    p = write(tmp_path, "f.csv", " Question , ANSWER ,Notes\nWho leads Zentrix?,Marta,checked\n")
    [f] = load_facts(p)
    assert (f.prompt, f.target, f.meta) == ("Who leads Zentrix?", "Marta", {"Notes": "checked"})
    # The real name wins over its synonym; the synonym is then kept as metadata.
    [f] = parse_facts('[{"prompt": "P", "question": "Q", "target": "T"}]', "json", "x.json")
    assert f.prompt == "P" and f.meta == {"question": "Q"}


def test_metadata_kept(tmp_path):
    p = write(tmp_path, "f.json", json.dumps([{"prompt": "A is", "target": "B", "source": "wiki", "score": 0.5,
                                              "tags": ["x"]}]))
    [f] = load_facts(p)
    assert f.meta == {"source": "wiki", "score": 0.5, "tags": ["x"]}
    # A blank cell of an extra CSV column is not metadata.
    [f] = load_facts(write(tmp_path, "f.csv", "prompt,target,note\nA is,B,\n"))
    assert f.meta == {}


def test_bom_is_fine(tmp_path):
    p = write(tmp_path, "f.csv", b"\xef\xbb\xbfprompt,target\nA is,B\n")
    assert load_facts(p)[0].prompt == "A is"
    assert parse_facts('\ufeff[{"prompt": "A", "target": "B"}]', "json", "s")[0].target == "B"


def test_invented_asset_loads():
    facts = load_facts(ASSETS / "invented.csv")
    assert len(facts) == 35 and [f.id for f in facts] == [f"inv{i:02d}" for i in range(1, 36)]
    assert len({(f.subject, f.relation) for f in facts}) == 35
    assert len({f.prompt for f in facts}) == 35
    for f in facts:
        assert len(f.paraphrases) == 2 and not f.prompt.endswith(" ") and 1 <= len(f.target.split()) <= 3


# ---------------------------------------------------------------- templates and CounterFact

def test_template_filled_and_kept_as_relation(tmp_path):
    p = write(tmp_path, "f.json", json.dumps([
        {"prompt": "{} is the CEO of", "subject": "Zentrix", "target": "Marta", "paraphrases": ["The boss of {} is"]},
        {"prompt": "{} is the CEO of", "subject": "Vellmora", "target": "Sunniva"},
        {"prompt": "{} is the CEO of", "subject": "Ulvarth", "target": "Joren", "relation": "ceo"},
    ]))
    a, b, c = load_facts(p)
    assert a.prompt == "Zentrix is the CEO of" and a.paraphrases == ["The boss of Zentrix is"]
    assert a.relation == b.relation == "{} is the CEO of"
    assert c.relation == "ceo"


def test_template_in_csv(tmp_path):
    p = write(tmp_path, "f.csv", "prompt,subject,target\nThe capital of {} is,Halvessa,Corvanne\n")
    [f] = load_facts(p)
    assert (f.prompt, f.relation) == ("The capital of Halvessa is", "The capital of {} is")


def test_counterfact_nesting(tmp_path):
    rec = {"case_id": 7, "pararel_idx": 3,
           "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                                 "target_new": {"str": "Veskari", "id": "Q1"},
                                 "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
           "paraphrase_prompts": ["Danielle Darrieux spoke the language", "The first language of {} is"],
           "neighborhood_prompts": ["The mother tongue of Jean Gabin is"]}
    [f] = load_facts(write(tmp_path, "cf.json", json.dumps([rec])))
    assert (f.id, f.prompt, f.target, f.subject) == ("7", "The mother tongue of Danielle Darrieux is", "Veskari",
                                                   "Danielle Darrieux")
    assert f.relation == "The mother tongue of {} is"
    assert f.paraphrases == ["Danielle Darrieux spoke the language", "The first language of Danielle Darrieux is"]
    assert f.meta["relation_id"] == "P103" and f.meta["target_true"]["str"] == "French"
    assert f.meta["neighborhood_prompts"] == ["The mother tongue of Jean Gabin is"]


# ---------------------------------------------------------------- ids

def test_ids_generated_stably(tmp_path):
    p = write(tmp_path, "f.csv", "prompt,target\nA is,B\nC is,D\nA is,B\n")
    first, second = load_facts(p), load_facts(p)
    assert [f.id for f in first] == [f.id for f in second]
    assert first[0].id.startswith("f") and len(first[0].id) == 9
    assert first[2].id == first[0].id + "-2"
    # Same content in another format gets the same id.
    j = write(tmp_path, "f.jsonl", '{"prompt": "C is", "target": "D"}\n')
    assert load_facts(j)[0].id == first[1].id


def test_generated_id_avoids_given_ids(tmp_path):
    [generated] = load_facts(write(tmp_path, "a.csv", "prompt,target\nA is,B\n"))
    p = write(tmp_path, "b.csv", f"id,prompt,target\n,A is,B\n{generated.id},X is,Y\n")
    facts = load_facts(p)
    assert [f.id for f in facts] == [generated.id + "-2", generated.id]


def test_duplicate_given_id_names_both_lines(tmp_path):
    msg = error(write(tmp_path, "dup.csv", "id,prompt,target\nx,A is,B\ny,C is,D\nx,E is,F\n"))
    assert "dup.csv" in msg and "line 4" in msg and "line 2" in msg and "duplicate id 'x'" in msg


# ---------------------------------------------------------------- table rows

def test_rows_from_table():
    rows = [{"prompt": "A is", "target": "B", "paraphrases": "p1|p2", "note": ""},
            {"prompt": "", "target": None, "paraphrases": "", "note": float("nan")},  # blank row
            {"Question": "C is", "Answer": 1987.0, "note": "n"}]
    a, b = facts_from_rows(rows)
    assert a.paraphrases == ["p1", "p2"] and a.meta == {}
    assert (b.prompt, b.target, b.meta) == ("C is", "1987", {"note": "n"})


def test_rows_errors_name_table_and_row():
    with pytest.raises(FactsError, match=r"^table, row 3: empty prompt"):
        facts_from_rows([{"prompt": "A", "target": "B"}, {"prompt": "", "target": ""}, {"prompt": " ", "target": "x"}])
    with pytest.raises(FactsError, match=r"^table: no facts"):
        facts_from_rows([{"prompt": "", "target": ""}])


# ---------------------------------------------------------------- errors

def test_file_not_found(tmp_path):
    msg = error(tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_unknown_extension(tmp_path):
    msg = error(write(tmp_path, "facts.txt", "prompt,target\nA,B\n"))
    assert "facts.txt" in msg and "unknown extension '.txt'" in msg


def test_empty_file(tmp_path):
    for name in ("e.csv", "e.json", "e.jsonl"):
        msg = error(write(tmp_path, name, "  \n"))
        assert name in msg and "empty" in msg


def test_too_big(tmp_path):
    msg = error(write(tmp_path, "big.csv", "prompt,target\n" + "A is,B\n" * 50), max_bytes=100)
    assert "big.csv" in msg and "364 bytes" in msg and "limit of 100 bytes" in msg


def test_not_utf8_names_line(tmp_path):
    msg = error(write(tmp_path, "latin.csv", "prompt,target\nA is,B\nCaf\xe9 is,C\n".encode("latin-1")))
    assert "latin.csv, line 3" in msg and "UTF-8" in msg


def test_malformed_json_line_and_column(tmp_path):
    msg = error(write(tmp_path, "bad.json", '[\n  {"prompt": "A", "target": "B"},\n  {"prompt": }\n]'))
    assert "bad.json, line 3, column 14" in msg and "malformed JSON" in msg
    msg = error(write(tmp_path, "bad.jsonl", '{"prompt": "A", "target": "B"}\n{"prompt": "C"\n'))
    assert "bad.jsonl, line 2" in msg and "malformed JSON" in msg


def test_json_top_level_not_a_list(tmp_path):
    msg = error(write(tmp_path, "top.json", '{"prompt": "A", "target": "B"}'))
    assert "top.json" in msg and "top level must be a list" in msg and "not an object" in msg
    msg = error(write(tmp_path, "num.json", "42"))
    assert "num.json" in msg and "not a number" in msg


def test_record_not_an_object(tmp_path):
    msg = error(write(tmp_path, "r.json", '[{"prompt": "A", "target": "B"}, ["C", "D"]]'))
    assert "r.json, record 2" in msg and "must be an object" in msg and "not a list" in msg
    msg = error(write(tmp_path, "r.jsonl", '{"prompt": "A", "target": "B"}\n"just text"\n'))
    assert "r.jsonl, line 2" in msg and "must be an object" in msg


def test_csv_missing_columns_lists_found(tmp_path):
    msg = error(write(tmp_path, "cols.csv", "id,text,reply\n1,A,B\n"))
    assert "cols.csv, line 1" in msg and "no prompt column (or question) and no target column (or answer)" in msg
    assert "'id', 'text', 'reply'" in msg
    msg = error(write(tmp_path, "semi.csv", "prompt;target\nA;B\n"))
    assert "semi.csv" in msg and "target column" in msg and "';'" in msg


def test_missing_target(tmp_path):
    msg = error(write(tmp_path, "t.csv", "prompt,target\nA is,B\nC is,  \n"))
    assert "t.csv, line 3" in msg and "missing target" in msg
    msg = error(write(tmp_path, "t.json", '[{"prompt": "A", "target": "B"}, {"prompt": "C"}]'))
    assert "t.json, record 2" in msg and "missing target" in msg


def test_empty_or_missing_prompt(tmp_path):
    msg = error(write(tmp_path, "p.csv", "prompt,target\nA is,B\n ,C\n"))
    assert "p.csv, line 3" in msg and "empty prompt" in msg
    msg = error(write(tmp_path, "p.jsonl", '{"target": "B"}\n'))
    assert "p.jsonl, line 1" in msg and "missing prompt" in msg


def test_template_without_subject(tmp_path):
    msg = error(write(tmp_path, "tpl.json", '[{"prompt": "{} is the CEO of", "target": "Marta"}]'))
    assert "tpl.json, record 1" in msg and "placeholder" in msg and "no subject" in msg


def test_bad_field_types(tmp_path):
    msg = error(write(tmp_path, "ty.json", '[{"prompt": ["A"], "target": "B"}]'))
    assert "ty.json, record 1" in msg and "prompt must be text" in msg
    msg = error(write(tmp_path, "pa.json", '[{"prompt": "A", "target": "B", "paraphrases": [1, 2]}]'))
    assert "pa.json, record 1" in msg and "paraphrases must be" in msg


def test_extra_csv_cells(tmp_path):
    msg = error(write(tmp_path, "x.csv", "prompt,target\nA is,B,oops\n"))
    assert "x.csv, line 2" in msg and "3 cells" in msg and "2 columns" in msg


def test_header_only_has_no_facts(tmp_path):
    msg = error(write(tmp_path, "h.csv", "prompt,target\n"))
    assert "h.csv" in msg and "no facts" in msg


# ---------------------------------------------------------------- saving

@pytest.mark.parametrize("ext", ["csv", "json", "jsonl"])
def test_round_trip(tmp_path, ext):
    facts = [Fact(id="a", prompt="The CEO of Zentrix is", target="Marta Ilves", subject="Zentrix",
                  relation="{} is the CEO of", paraphrases=["Zentrix is led by", "Who, \"really\", runs it?"],
                  meta={"note": "line one\nline two"}),
             Fact(id="b", prompt="Drusk is in", target="Vellmora")]
    path = tmp_path / f"out.{ext}"
    save_facts(facts, path)
    assert load_facts(path) == facts


def test_round_trip_of_loaded_templates_and_asset(tmp_path):
    cf = load_facts(write(tmp_path, "t.json", '[{"prompt": "{} is the CEO of", "subject": "Zentrix", "target": "M"}]'))
    save_facts(cf, tmp_path / "t2.csv")
    assert load_facts(tmp_path / "t2.csv") == cf
    asset = load_facts(ASSETS / "invented.csv")
    save_facts(asset, tmp_path / "inv.csv")
    assert load_facts(tmp_path / "inv.csv") == asset


def test_save_errors(tmp_path):
    with pytest.raises(FactsError, match="unknown extension"):
        save_facts([Fact(id="a", prompt="A", target="B")], tmp_path / "out.txt")
    with pytest.raises(FactsError, match=r"out.csv: fact 'a' .*'\|'"):
        save_facts([Fact(id="a", prompt="A", target="B", paraphrases=["x|y"])], tmp_path / "out.csv")


def test_to_dict_from_dict():
    f = Fact(id="a", prompt="A", target="B", paraphrases=["p"], meta={"k": [1]})
    d = f.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Fact.from_dict(d) == f
    d["paraphrases"].append("q")
    assert f.paraphrases == ["p"]  # to_dict copies


# ---------------------------------------------------------------- limits and hostile input

def test_fact_count_limit_in_files_and_tables(tmp_path, monkeypatch):
    p = write(tmp_path, "many.csv", "prompt,target\n" + "".join(f"P{i} is,T\n" for i in range(30)))
    msg = error(p, max_facts=20)
    assert "many.csv" in msg and "30 facts" in msg and "limit of 20" in msg
    assert len(load_facts(p, max_facts=30)) == 30
    monkeypatch.setattr("beacon.data.facts.MAX_FACTS", 10)  # the default, from BEACON_MAX_FACTS
    assert "limit of 10" in error(p)
    with pytest.raises(FactsError, match=r"^facts table: 30 facts, over the limit of 10"):
        facts_from_rows([{"prompt": f"P{i} is", "target": "T"} for i in range(30)], source="facts table")


def test_max_facts_from_env():
    from beacon.data.facts import _limit_from_env

    import os
    os.environ["BEACON_TEST_LIMIT"] = "123"
    try:
        assert _limit_from_env("BEACON_TEST_LIMIT", 7) == 123
        os.environ["BEACON_TEST_LIMIT"] = "lots"
        with pytest.raises(ValueError, match="BEACON_TEST_LIMIT='lots'"):
            _limit_from_env("BEACON_TEST_LIMIT", 7)
    finally:
        del os.environ["BEACON_TEST_LIMIT"]
    assert _limit_from_env("BEACON_TEST_LIMIT", 7) == 7


def test_table_text_limit():
    rows = [{"prompt": "A is", "target": "B", "note": "x" * 600}, {"prompt": "C is", "target": "D", "note": "y" * 600}]
    with pytest.raises(FactsError, match=r"^table, row 2: .*more than 1,000 bytes of text"):
        facts_from_rows(rows, max_bytes=1000)
    assert len(facts_from_rows(rows, max_bytes=2000)) == 2


def test_template_filling_is_bounded(tmp_path):
    rec = {"prompt": "{}" * 1000, "subject": "x" * 1000, "target": "B"}
    msg = error(write(tmp_path, "tpl.json", json.dumps([rec])), max_bytes=100_000)
    assert "tpl.json, record 1" in msg and "placeholders" in msg and "998,000 characters" in msg


def test_not_a_regular_file(tmp_path):
    import os
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert "not a regular file" in error(fifo)  # and does not block waiting for a writer
    if Path("/dev/zero").exists():
        (tmp_path / "zero.csv").symlink_to("/dev/zero")
        assert "zero.csv" in (msg := error(tmp_path / "zero.csv")) and "not a regular file" in msg


def test_deep_nesting_huge_numbers_and_surrogates_are_facts_errors(tmp_path):
    msg = error(write(tmp_path, "deep.json", "[" * 100_000))
    assert "deep.json, line 1" in msg and "nested more than" in msg
    msg = error(write(tmp_path, "deep.jsonl", '{"prompt": "A", "target": "B"}\n{"m": ' + "[" * 50 + "]" * 50 + "}\n"))
    assert "deep.jsonl, line 2" in msg and "nested more than" in msg
    msg = error(write(tmp_path, "num.json", '[{"prompt": "A",\n "target": ' + "9" * 5000 + "}]"))
    assert "num.json, line 2" in msg and "more than 4,300 digits" in msg
    msg = error(write(tmp_path, "sur.json", '[{"prompt": "A \\ud800", "target": "B"}]'))
    assert "sur.json, record 1" in msg and "surrogate" in msg
    with pytest.raises(FactsError, match="row 1: target is a number with more than"):
        facts_from_rows([{"prompt": "A", "target": 10 ** 5000}])
    assert "UTF-16" in error(write(tmp_path, "u16.csv", "prompt,target\nA,B\n".encode("utf-16")))


def test_cr_only_line_endings_name_the_right_line(tmp_path):
    assert "cr.csv, line 3: missing target" in error(write(tmp_path, "cr.csv", b"prompt,target\rA,B\rC,\r"))
    assert "cr.jsonl, line 2: missing target" in error(write(tmp_path, "cr.jsonl", b'{"prompt":"A","target":"B"}\r{"prompt":"C"}\r'))
    assert "cr.json, line 3, column 12" in error(write(tmp_path, "cr.json", b'[\r{"prompt":"A","target":"B"},\r{"prompt": }]'))
    assert "crb.csv, line 3: not valid UTF-8" in error(write(tmp_path, "crb.csv", b"prompt,target\rA,B\rC\xe9,D\r"))


def test_duplicate_column_names(tmp_path):
    msg = error(write(tmp_path, "dup.csv", "prompt,target,note,note\nA,B,x,y\n"))
    assert "dup.csv, line 1" in msg and "'note' appears more than once" in msg


def test_identical_rows_get_ids_in_linear_time(tmp_path):
    import time
    p = write(tmp_path, "same.csv", "id,prompt,target\n" + ",A is,B\n" * 20_000)
    t = time.perf_counter()
    facts = load_facts(p, max_facts=20_000)
    assert time.perf_counter() - t < 2  # was n^2/2 set lookups: minutes at 100,000 rows
    assert len({f.id for f in facts}) == 20_000 and facts[-1].id == facts[0].id + "-20000"


def test_csv_round_trip_keeps_metadata_types_and_escapes_formulas(tmp_path):
    meta = {"score": 0.5, "year": 1987, "tags": ["x", "y"], "ok": True, "none": None, "nested": {"a": [1]},
            "looks_like_json": "42", "quoted": '"q"', "blank": "", "version": "1.10", "neg": -3,
            "=HYPERLINK(\"http://x\")": "@SUM(A1)"}
    facts = [Fact(id="=1+1", prompt="-2 plus 5 is", target="=3", subject="+x", relation="@r",
                  paraphrases=["=cmd' /C calc'!A0", "ok"], meta=meta),
             Fact(id="b", prompt="'=already quoted", target="''-two quotes", meta={"score": "\tx"}),
             Fact(id="c", prompt="'plain quote", target="\rcr")]
    path = tmp_path / "out.csv"
    save_facts(facts, path)
    text = path.read_text(encoding="utf-8")
    import csv as _csv
    for row in _csv.reader(io.StringIO(text, newline="")):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell  # no cell runs as a formula
    loaded = load_facts(path)
    facts[2].target = "cr"  # a loaded target is stripped
    facts[1].meta = {"score": "\tx"}
    assert loaded == facts
    # hand-written metadata: JSON exactly as save_facts writes it is read as JSON, anything else stays text
    [f] = load_facts(write(tmp_path, "hand.csv", 'prompt,target,a,b,c,d,e\nA,B,42,1.10,007,"[1,2]","[1, 2]"\n'))
    assert f.meta == {"a": 42, "b": "1.10", "c": "007", "d": "[1,2]", "e": [1, 2]}
