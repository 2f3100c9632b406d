"""All-caps training data: learned in lower case, transcripts rendered back in upper case."""

from __future__ import annotations

import json

import pytest

from mlx_whisper_lora.text import case_style
from mlx_whisper_lora.assets_dir import ASSETS


def test_detect_votes_only_on_cased_scripts():
    assert case_style.detect(["THE CAT SAT", "A DOG 42", "你好"]) == "upper"
    assert case_style.detect(["the cat sat", "a dog"]) == "lower"
    assert case_style.detect(["THE CAT", "The dog"]) == "keep"
    assert case_style.detect(["THE CAT", "the dog"]) == "keep"  # mixed data: nothing to infer
    assert case_style.detect(["你好", "42"]) == "keep"
    assert case_style.resolve("keep", ["THE CAT"]) == "keep"
    with pytest.raises(ValueError, match="case style 'title'"):
        case_style.resolve("title", [])


def test_training_text_and_render_round_trip():
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    ref = "AUGUST RIOTS IMPRISONING WOMEN"
    assert case_style.training_text(ref, "upper") == "august riots imprisoning women"
    assert case_style.render(case_style.training_text(ref, "upper"), "upper") == ref
    # with the vocabulary: names whose capitalized form is fewer tokens are capitalized, as is "I"
    tok = get_tokenizer(False)
    cased = case_style.training_text("THEN I WENT TO SEE KING PHILIP IN AMERICA", "upper", tok, "en")
    assert cased == "Then I went to see king Philip in America"
    assert case_style.render(cased, "upper") == "THEN I WENT TO SEE KING PHILIP IN AMERICA"
    assert case_style.training_text("The Cat", "keep") == "The Cat" and case_style.render("The Cat", None) == "The Cat"


def _demo_data_written(data, restyle):
    """The first 4 utterances of each bundled demo split, transcripts passed through `restyle`."""

    demo = ASSETS / "demo_data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        rows = [json.loads(x) for x in (demo / f"{split}.jsonl").read_text().splitlines() if x.strip()]
        for row in rows:
            row["audio"] = str(demo / row["audio"])
            row["text"] = restyle(row["text"])
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    return data


@pytest.mark.slow  # the default suite's 15-minute budget (.ci/run, 2 cores)
def test_all_caps_data_trains_lower_case_and_reports_upper_case(tmp_path, capsys):
    """CLI end to end on the bundled demo data upper-cased: the style is detected and recorded,
    labels are lower case, --test and transcribe render upper case, and the mlx fuse keeps it."""
    from mlx_whisper_lora.lora import main

    data = _demo_data_written(tmp_path / "data", str.upper)
    out = tmp_path / "adapters"
    main(["--train", "--test", "--no-hallucination-check", "--backend", "mlx", "--data", str(data), "--adapter-path", str(out), "--iters", "2",
          "--batch-size", "2", "--freeze-encoder", "--no-progress", "--timestamp-fraction", "0"])
    err = capsys.readouterr().err
    assert "case style: upper" in err
    assert json.loads((out / "adapter_config.json").read_text())["case_style"] == "upper"
    report = json.loads((out / "test_results.json").read_text())
    hyps = [t["hypothesis"] for t in report["transcripts"]]
    assert hyps and all(h == h.upper() and any(c.isalpha() for c in h) for h in hyps)

    from mlx_whisper_lora.backend_mlx.adapters import load_adapters
    from mlx_whisper_lora.data.examples import ExampleSet
    from mlx_whisper_lora.data.manifests import read_manifest
    from mlx_whisper_lora.backend_mlx.load import load_model
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    examples, _ = ExampleSet.build(read_manifest(data / "train.jsonl"), tokenizer, "transcribe", 80, 448,
                                   case_style="upper")
    text = tokenizer.decode([t for t in examples.labels[0].tokens if t < tokenizer.eot]).strip()
    reference = read_manifest(data / "train.jsonl")[0].text
    assert text.lower() == reference.lower() and text != reference  # same words, not in capitals
    assert sum(c.isupper() for c in text) < sum(c.islower() for c in text)

    from mlx_whisper_lora.fuse import fuse
    from mlx_whisper_lora.transcribe import transcribe

    fused = fuse(None, out, tmp_path / "fused", log=lambda m: None)
    assert json.loads((fused / "mlx_whisper_lora.json").read_text())["case_style"] == "upper"
    assert "case_style" not in json.loads((fused / "config.json").read_text())  # mlx-whisper reads config.json
    model = load_model(str(fused))
    assert model.case_style == "upper"
    result = transcribe(str(ASSETS / "demo_data" / "audio" / "test-0000.flac"), model, language="en")
    assert result["text"].strip() and result["text"] == result["text"].upper()
    assert all(s["text"] == s["text"].upper() for s in result["segments"])
    plain = load_model("tiny.en")
    load_adapters(plain, tmp_path / "adapters")
    assert plain.case_style == "upper"


def test_punctuation_is_detected_stripped_and_rendered():
    assert case_style.has_punctuation(["THE CAT SAT", "IT'S A DOG", "A WELL-KNOWN MAN", "Hi."])
    assert not case_style.has_punctuation(["THE CAT SAT", "IT'S A DOG", "A WELL-KNOWN MAN"])
    text = "\"Well,\" said Mr. Wilson's aide, a half-century later: 'no!'"
    assert case_style.strip_punctuation(text) == "Well said Mr Wilson's aide a half century later no"
    assert case_style.render(text, "upper", "none") == "WELL SAID MR WILSON'S AIDE A HALF CENTURY LATER NO"
    assert case_style.render(text, "keep", "keep") == text


def test_base_styled_text_takes_case_and_punctuation_where_the_words_agree():
    from mlx_whisper_lora.text.tokenizer import get_tokenizer

    tok = get_tokenizer(False)
    ref = "AUGUST RIOTS IMPRISONING WOMEN HAD MET PRESIDENT WILSON"
    said = "August riots. Imprisoning women had met, President Wiltson."
    styled = case_style.base_styled_text(ref, said, "upper", tok, "en")
    # matching words as the base model wrote them; its misheard name replaced by the reference's word,
    # written as training_text writes it (capitalized: " Wilson" is one token)
    assert styled == "August riots. Imprisoning women had met, President Wilson"
    assert case_style.render(styled, "upper", "none") == ref
    # a word the base model missed keeps the reference's word; a sentence it ended starts with a capital
    assert case_style.base_styled_text("THE CAT SAT THE DOG RAN", "The cat sat. the dog ran.", "upper", tok, "en") \
        == "The cat sat. The dog ran."
    assert case_style.base_styled_text("THE BIG CAT", "The cat.", "upper", tok, "en") == "The big cat."


@pytest.mark.slow  # 33 s: keeps the default suite under 15 minutes
def test_unpunctuated_all_caps_data_with_base_style_targets(tmp_path, capsys):
    """CLI end to end (torch back end): no punctuation in the data, so none in the output; the base
    model's transcripts of the training audio give the targets their case and punctuation, and are
    kept beside the adapters so a second run reuses them."""
    pytest.importorskip("torch", reason="the torch back end needs PyTorch")
    from mlx_whisper_lora.lora import BASE_STYLE_FILE, main

    data = _demo_data_written(tmp_path / "data", lambda t: case_style.strip_punctuation(t).upper())
    out = tmp_path / "adapters"
    args = ["--train", "--test", "--no-hallucination-check", "--backend", "torch", "--data", str(data), "--adapter-path", str(out), "--iters", "2",
            "--batch-size", "2", "--freeze-encoder", "--no-progress", "--base-style-targets"]
    main(args)
    err = capsys.readouterr().err
    assert "punctuation: none" in err and "transcribing the 4 training utterances" in err
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["case_style"] == "upper" and config["punctuation"] == "none"
    rows = [json.loads(x) for x in (out / BASE_STYLE_FILE).read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:  # the reference's words, in the base transcript's style
        assert case_style.render(row["text"], "upper", "none") == json.loads(row["key"])[2]
    assert any(c in "".join(r["text"] for r in rows) for c in ".,") and any(r["text"] != r["text"].upper() for r in rows)
    hyps = [t["hypothesis"] for t in json.loads((out / "test_results.json").read_text())["transcripts"]]
    assert hyps and all(h == h.upper() and not case_style.has_punctuation([h]) for h in hyps)
    main(args[:-1] + ["--base-style-targets", "--iters", "3", "--resume-adapter-file", str(out / "adapters.safetensors")])
    assert "base-style targets: read from" in capsys.readouterr().err
