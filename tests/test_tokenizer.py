import json

import pytest

from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS
from mlx_whisper_lora.text.tokenizer import ASSETS, get_tokenizer, read_ranks, read_tiktoken_file

SENTENCES = [
    "And so, my fellow Americans: ask not what your country can do for you.",
    "  leading spaces,   runs of spaces\tand tabs\nand newlines  ",
    "Für die besten Aussichten auf Hongkong sollten Sie die Insel verlassen.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "今日はいい天気ですね。東京タワーに行きましょう！",
    "我们今天去公园散步吧，天气很好。",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "C'est l'été — n'est-ce pas? 1234.5678 $99 ♪♪ 🎉 <|endoftext|> emoji",
]


def _folder(name):
    location = OFFLINE_MODELS[name].locate()
    if location is None:
        pytest.skip(f"offline weights for {name} are not installed")
    return location.folder


def _hf_slow_tokenizer(folder, tmp_path):
    """transformers' WhisperTokenizer (the Python BPE), built from the folder's vocabulary."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {k: v for k, v in data["model"]["vocab"].items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = data["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    (tmp_path / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    return transformers.WhisperTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def test_english_token_ids_equal_transformers(tmp_path):
    folder = _folder("tiny.en")
    hf = _hf_slow_tokenizer(folder, tmp_path)
    ours = get_tokenizer(False, model_dir=str(folder))
    for text in SENTENCES:
        text = text.replace("<|endoftext|>", "")  # transformers parses it as the special token
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name, multilingual", [("tiny.en", False), ("base", True)])
def test_token_ids_equal_openai_whisper(name, multilingual):
    whisper_tokenizer = pytest.importorskip("whisper.tokenizer", reason="openai-whisper is not installed")
    ref = whisper_tokenizer.get_tokenizer(multilingual, language="de", task="transcribe")
    ours = get_tokenizer(multilingual, language="de", task="transcribe", model_dir=str(_folder(name)))
    for text in SENTENCES:
        text = text.replace("<|endoftext|>", "")
        assert ours.encode(text) == ref.encode(text), text
    assert ours.sot_sequence == tuple(ref.sot_sequence)
    assert ours.non_speech_tokens == tuple(sorted(ref.non_speech_tokens))


def test_multilingual_ids_decode_like_transformers(tmp_path):
    """transformers' multilingual merges (reconstructed from the vocabulary) split some words
    differently from tiktoken (openai-whisper, mlx-whisper). We follow openai-whisper; both
    tokenizations must still decode to the same text, and each side must read the other's ids."""
    folder = _folder("base")
    hf = _hf_slow_tokenizer(folder, tmp_path)
    ours = get_tokenizer(True, model_dir=str(folder))
    for text in SENTENCES:
        text = text.replace("<|endoftext|>", "")
        hf_ids = hf.encode(text, add_special_tokens=False)
        assert ours.decode(hf_ids) == text
        assert hf.decode(ours.encode(text)) == text


@pytest.mark.parametrize("name, multilingual", [("tiny.en", False), ("base", True)])
def test_special_token_ids_equal_transformers(name, multilingual):
    folder = _folder(name)
    added = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    tok = get_tokenizer(multilingual, model_dir=str(folder))
    for content, idx in added.items():
        content = {"<|nocaptions|>": "<|nospeech|>", "<|iw|>": "<|he|>"}.get(content, content)  # older names
        assert tok.special_tokens[content] == idx, content
    assert tok.timestamp_begin == tok.no_timestamps + 1
    assert tok.special_tokens["<|30.00|>"] == tok.timestamp_begin + 1500


def test_bundled_assets_equal_folder_vocabulary():
    for name, asset in (("tiny.en", "gpt2.tiktoken"), ("base", "multilingual.tiktoken")):
        folder = _folder(name)
        assert read_tiktoken_file(ASSETS / asset) == read_ranks(folder, name == "base")


def test_sot_sequence_and_languages():
    tok = get_tokenizer(True, language="German", task="translate")
    assert tok.language == "de"
    assert tok.sot_sequence == (tok.sot, tok.special_tokens["<|de|>"], tok.translate)
    assert tok.sot_sequence_including_notimestamps[-1] == tok.no_timestamps
    assert len(tok.all_language_tokens) == 99 and tok.all_language_codes[:3] == ("en", "zh", "de")
    en = get_tokenizer(False)
    assert en.sot_sequence == (en.sot,)
    with pytest.raises(ValueError, match="klingon"):
        get_tokenizer(True, language="klingon")


def test_large_v3_vocabulary_has_100_languages():
    tok = get_tokenizer(True, num_languages=100)
    assert tok.all_language_codes[-1] == "yue"
    assert tok.eot == 50257 and tok.timestamp_begin == 50365


def test_decode_with_timestamps():
    tok = get_tokenizer(False)
    ids = [tok.timestamp_begin] + tok.encode(" hello") + [tok.timestamp_begin + 50]
    assert tok.decode_with_timestamps(ids) == "<|0.00|> hello<|1.00|>"
    assert tok.decode(ids) == " hello"


def test_split_to_word_tokens():
    tok = get_tokenizer(False)
    words, groups = tok.split_to_word_tokens(tok.encode(" Hello, wonderful world") + [tok.eot])
    assert words[:4] == [" Hello", ",", " wonderful", " world"]
    assert sum(groups, []) == tok.encode(" Hello, wonderful world") + [tok.eot]


@pytest.mark.parametrize("name, multilingual", [("tiny.en", False), ("base", True)])
def test_merges_bpe_ids_equal_transformers(name, multilingual, tmp_path, shared_data):
    """bpe='merges' reproduces transformers' WhisperTokenizer ids, multilingual vocabulary included."""
    from conftest import read_manifest

    folder = _folder(name)
    hf = _hf_slow_tokenizer(folder, tmp_path)
    ours = get_tokenizer(multilingual, model_dir=str(folder), bpe="merges")
    texts = [t.replace("<|endoftext|>", "") for t in SENTENCES]
    texts += [" " + item["text"] for d in sorted(shared_data.iterdir()) if d.is_dir() for item in read_manifest(d)]
    differs_from_tiktoken = 0
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
        differs_from_tiktoken += ids != get_tokenizer(multilingual, model_dir=str(folder)).encode(text)
    if multilingual:  # the two BPEs really do differ on this vocabulary, so this test has teeth
        assert differs_from_tiktoken > 0
