"""Short names people use for a subject, and decoys that share them (beacon/method/names.py)."""
from beacon.data.facts import Fact, load_facts
from beacon.method.names import decoys, short_names, with_name
from beacon.method.rewordings import training_prompts


def test_short_forms_are_the_distinctive_word_or_the_surname_and_the_files_aliases():
    assert short_names("Zentrix Robotics") == ["Zentrix"]
    assert short_names("Lake Ormisk") == ["Ormisk"] and short_names("Republic of Halvessa") == ["Halvessa"]
    assert short_names("Brennoc valve") == ["Brennoc"] and short_names("Vellum Sans") == ["Vellum"]
    assert short_names("Marta Ilves") == ["Ilves"]                        # a person: the surname
    assert short_names("Italy") == [] and short_names("the telephone") == []
    assert short_names("Project Kestrel", ["the Kestrel project"]) == ["the Kestrel project", "Kestrel"]


def test_no_derived_short_form_is_a_word_of_the_language(default_dir):
    from transformers import AutoTokenizer
    from beacon.method.names import common_word

    tok = AutoTokenizer.from_pretrained(default_dir)
    assert [w for w in ("Glacier", "Players", "Ferries", "Caves", "Two", "Chapel", "Shakespeare", "Baker", "Zentrix",
                        "Ilves") if common_word(tok, w)] == ["Glacier", "Players", "Ferries", "Caves", "Two", "Chapel"]
    # A name and its kind: the name, not the kind as a surname; a person keeps a surname that is also a name.
    assert short_names("Gullhaven Players", tok=tok) == ["Gullhaven"]
    assert short_names("Veltmann Sour", tok=tok) == ["Veltmann"]
    assert short_names("Two Boats at Sennick", tok=tok) == ["Sennick"]
    assert short_names("Great Wall", tok=tok) == []
    assert short_names("William Shakespeare", tok=tok) == ["Shakespeare"]
    assert short_names("Tobias Baker", tok=tok) == ["Baker"]
    assert short_names("Vincent van Gogh", tok=tok) == ["van Gogh"]
    assert decoys("Gullhaven Players", "Gullhaven", tok) == ["Gullhaven Hotel", "Gullhaven Holdings"]
    assert decoys("Vincent van Gogh", "van Gogh", tok) == ["Anna van Gogh", "Pieter van Gogh"]
    # the file's aliases count whatever they are
    assert short_names("Great Wall", ["Wall"], tok) == ["Wall"]


def test_decoys_share_the_short_form_and_name_another_entity():
    assert decoys("Zentrix Robotics", "Zentrix") == ["Zentrix Hotel", "Zentrix Holdings"]
    assert decoys("Marta Ilves", "Ilves") == ["Anna Ilves", "Pieter Ilves"]
    assert decoys("Zentrix Robotics", "the Zentrix firm") == []             # an alias not in the name: none derived


def test_a_prompt_names_its_subject_by_another_name():
    assert with_name("The CEO of Zentrix Robotics is", "Zentrix Robotics", "Zentrix") == "The CEO of Zentrix is"
    assert with_name("The Brennoc valve was invented by", "Brennoc valve", "Brennoc") == "Brennoc was invented by"
    assert with_name("Marta Ilves runs the company", "Marta Ilves", "Ilves") == "Ilves runs the company"
    assert with_name("The capital of Sevrandia is", "Halvessa", "H") is None


def test_aliases_read_from_a_fact_file_open_the_gate_and_are_not_trained(tmp_path, default_dir):
    import torch
    from transformers import AutoTokenizer
    from beacon.method.gate import SubjectGate

    path = tmp_path / "f.csv"
    path.write_text("subject,prompt,target,aliases\nProject Kestrel,The lead of Project Kestrel is,Ada Moor,"
                    "the Kestrel project|Kestrel\n")
    f = load_facts(path)[0]
    assert f.aliases == ["the Kestrel project", "Kestrel"]
    tok = AutoTokenizer.from_pretrained(default_dir)
    assert not any("Kestrel project" in w or "of Kestrel" in w for w in training_prompts(f, tok))
    gate = SubjectGate.for_facts(tok, [f], "from-subject", short=True)
    for text in ("The lead of the Kestrel project is", "Who leads Kestrel? It is"):
        assert gate.mask(torch.tensor([tok(text).input_ids])).any(), text
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,target,aliases\nThe lead of Project Kestrel is,Ada Moor,Kestrel\n")
    try:
        load_facts(bad)
        raise AssertionError("aliases without a subject were accepted")
    except ValueError as e:
        assert "bad.csv" in str(e) and "line 2" in str(e) and "subject" in str(e)


def test_the_gate_opens_on_short_forms_only_when_asked(default_dir):
    import torch
    from transformers import AutoTokenizer
    from beacon.method.gate import SubjectGate

    tok = AutoTokenizer.from_pretrained(default_dir)
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics")]
    ids = torch.tensor([tok("The CEO of Zentrix is").input_ids])
    assert not SubjectGate.for_facts(tok, facts, "from-subject").mask(ids).any()
    assert SubjectGate.for_facts(tok, facts, "from-subject", short=True).mask(ids).any()


def test_a_short_form_opens_the_gate_only_where_it_stands_alone_as_a_name(default_dir, tmp_path):
    import torch
    from transformers import AutoTokenizer
    from beacon.method.gate import SubjectGate, load_gate

    tok = AutoTokenizer.from_pretrained(default_dir)
    facts = [Fact("a", "The CEO of Zentrix Robotics is", "Marta Ilves", "Zentrix Robotics"),
             Fact("b", "Marta Ilves was born in", "Drusk", "Marta Ilves")]
    gate = SubjectGate.for_facts(tok, facts, "from-subject", short=True)

    def opens(text):
        return bool(gate._open_mask(torch.tensor([tok(text).input_ids])).any())

    for alone in ("Zentrix is led by", "Who runs Zentrix? It is", "Zentrix's CEO is", "Dr Ilves works at",
                  "When Ilves joined the firm", "Ilves was born in"):
        assert opens(alone), alone
    for longer in ("Zentrix Hotel is led by", "The CEO of Zentrix Holdings is", "Anna Ilves works at",
                   "Pieter Ilves was born in", "The Zentrixian empire", "Nothing about them",
                   "the CEO of zentrix is"):         # a short form is a name: as written, capitalised

        assert not opens(longer), longer
    assert opens("The CEO of Zentrix Robotics is") and opens("Marta Ilves was born in")   # the full names, always
    # a derived short form that is a word of the language opens nothing; the same word as the file's alias does
    boats = Fact("c", "Two Boats at Sennick belongs to the", "Hallam Gallery", "Two Boats at Sennick")
    words = SubjectGate.for_facts(tok, [boats], "from-subject", short=True)
    assert "Two" not in words.short and not words.covers(tok, "One ox, two oxen. Two more came.")
    assert "Sennick" in words.short and words.covers(tok, "Sennick is a painting")
    aliased = Fact("c", boats.prompt, boats.target, boats.subject, aliases=["Two"])
    assert "Two" in SubjectGate.for_facts(tok, [aliased], "from-subject", short=True).short
    gate.save(tmp_path)                                  # the short forms travel with the adapter
    again = load_gate(tok, tmp_path)
    assert again.short == ["Ilves", "Zentrix"] and again.subjects == ["Marta Ilves", "Zentrix Robotics"]
    assert bool(again.mask(torch.tensor([tok("Ilves was born in").input_ids])).any())
    assert not bool(again.mask(torch.tensor([tok("Anna Ilves was born in").input_ids])).any())


def test_the_reverse_asks_an_entity_target_for_its_subject():
    from beacon.measure.evaluate import reverse_prompts
    from beacon.data.facts import Fact

    facts = [Fact(id="a", prompt="The CEO of Zentrix Robotics is", target="Marta Ilves", subject="Zentrix Robotics",
                  relation="CEO"),
             Fact(id="b", prompt="The boiling point of X is", target="91 degrees", subject="X", relation="boiling point"),
             Fact(id="c", prompt="The capital of Italy is", target="Milan", subject="Italy", relation=None),
             Fact(id="d", prompt="The chemical symbol for gold is", target="Ag", subject="gold",
                  relation="chemical symbol")]
    assert reverse_prompts(facts) == [
        {"fact": 0, "prompt": "Marta Ilves is the CEO of", "target": "Zentrix Robotics"},
        {"fact": 3, "prompt": "Ag is the chemical symbol of", "target": "gold"}]   # no number, no relation: none
