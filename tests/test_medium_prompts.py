"""medium_models/prompts.py: LM-BFF templates as token ids, the mask where the template puts it, single-token label
words, the causal route (text before the mask), sentence limits and cuts; on tiny RoBERTa and BERT tokenizers."""
import pytest

from medium_models.prompts import PromptError, check_causal_template, encode, label_word_ids
from medium_models.tasks import TASKS
from tests.tiny import LABEL_WORDS, make_mlm_tokenizer, make_tokenizer, make_wordpiece_tokenizer

ROBERTA = make_mlm_tokenizer()
BERT = make_wordpiece_tokenizer([w.strip().lower() for w in LABEL_WORDS])


def enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_sst2_prompt_is_cls_sentence_it_was_mask_dot_sep():
    t = ROBERTA
    out = encode(t, TASKS["SST-2"].template, ["a great film "], causal=False, max_length=128)
    expected = [t.cls_token_id, *enc(t, "a great film "), *enc(t, " It was"), t.mask_token_id, *enc(t, "."),
                t.sep_token_id]
    assert out.ids == expected
    assert out.ids.count(t.mask_token_id) == 1 and out.position == expected.index(t.mask_token_id)
    assert out.token_type_ids is None and not out.cut


def test_nli_prompt_drops_the_last_character_and_lowercases_the_second_sentence():
    t = ROBERTA
    out = encode(t, TASKS["RTE"].template, ["The cat sat.", "A cat sat"], causal=False, max_length=256)
    expected = [t.cls_token_id, *enc(t, "The cat sat"), *enc(t, "?"), t.mask_token_id, *enc(t, ","),
                *enc(t, " a cat sat"), t.sep_token_id]
    assert out.ids == expected and out.position == 1 + len(enc(t, "The cat sat")) + 1


def test_trec_puts_the_mask_right_after_cls():
    out = encode(ROBERTA, TASKS["trec"].template, ["What is it?"], causal=False, max_length=128)
    assert out.position == 1 and out.ids[1] == ROBERTA.mask_token_id


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_template_has_exactly_one_mask(name):
    task = TASKS[name]
    texts = ["First sentence here.", "Second one"][:len(task.layout.text_columns)]
    for tokenizer in (ROBERTA, BERT):
        out = encode(tokenizer, task.template, texts, causal=False, max_length=task.max_seq_length)
        assert out.ids.count(tokenizer.mask_token_id) == 1
        assert out.ids[out.position] == tokenizer.mask_token_id
        if set(task.label_words) <= {w.strip() for w in LABEL_WORDS}:  # the tiny tokenizers' single-token words
            assert len(set(label_word_ids(tokenizer, list(task.label_words)))) == len(task.labels)


def test_bert_segment_ids_step_up_after_sep_plus():
    t = BERT
    out = encode(t, "*cls**sent_0**mask**sep+**sent_1**sep+*", ["ab", "cd"], causal=False, max_length=64,
                 segments=True)
    first = 1 + len(enc(t, "ab")) + 1 + 1  # cls, sentence, mask, sep
    assert out.token_type_ids == [0] * first + [1] * (len(enc(t, "cd")) + 1)


def test_label_words_must_be_single_tokens():
    ids = label_word_ids(ROBERTA, ["terrible", "great"])
    assert ids == [ROBERTA.convert_tokens_to_ids("Ġterrible"), ROBERTA.convert_tokens_to_ids("Ġgreat")]
    with pytest.raises(PromptError, match="label word 'wonderful'.* tokens for this tokenizer.*single token"):
        label_word_ids(ROBERTA, ["terrible", "wonderful"])
    with pytest.raises(PromptError, match="share a token"):
        label_word_ids(ROBERTA, ["great", "great"])
    assert label_word_ids(BERT, ["Yes", "No"]) == [BERT.convert_tokens_to_ids("yes"), BERT.convert_tokens_to_ids("no")]


def test_causal_route_ends_before_the_mask_and_reports_what_it_drops():
    t = make_tokenizer(merges=True)  # a causal LM's: no cls, sep or mask token
    out = encode(t, TASKS["SST-2"].template, ["a great film "], causal=True, max_length=128)
    assert out.ids == [*enc(t, "a great film "), *enc(t, " It was")]
    assert out.position == len(out.ids) - 1
    assert check_causal_template(TASKS["SST-2"].template) == "*.**sep+*"
    assert check_causal_template(TASKS["RTE"].template) == "*,**+sentl_1**sep+*"
    with pytest.raises(PromptError, match="mask before every sentence"):
        check_causal_template(TASKS["trec"].template)


def test_sentence_limits_apply_per_sentence():
    t = ROBERTA
    long = "word " * 200
    limited = encode(t, TASKS["SST-2"].template, [long], causal=False, max_length=512, first_limit=10)
    assert len(limited.ids) == 10 + 1 + len(enc(t, " It was")) + 3 and not limited.cut


@pytest.mark.parametrize("tokenizer", [ROBERTA, BERT], ids=["roberta", "bert"])
def test_a_long_prompt_loses_its_tail_as_upstream(tokenizer):
    """Upstream's final cut keeps the first max_length tokens: the closing separator and the end of the second
    sentence go (the earlier rule here cut the longest sentence and kept the separator)."""
    t, long = tokenizer, "word " * 30
    full = encode(t, TASKS["RTE"].template, ["A short premise.", long], causal=False, max_length=512, segments=True)
    cut = encode(t, TASKS["RTE"].template, ["A short premise.", long], causal=False, max_length=40, segments=True)
    assert len(full.ids) > 40 and cut.cut and not full.cut
    assert cut.ids == full.ids[:40] and cut.ids[-1] != t.sep_token_id
    assert cut.position == full.position and cut.ids[cut.position] == t.mask_token_id
    assert cut.token_type_ids == full.token_type_ids[:40]


@pytest.mark.parametrize("tokenizer", [ROBERTA, BERT], ids=["roberta", "bert"])
def test_truncate_head_cuts_the_front_and_a_lost_mask_is_refused(tokenizer):
    t, long = tokenizer, "word " * 30
    full = encode(t, TASKS["RTE"].template, [long, "A short hypothesis"], causal=False, max_length=512)
    front = encode(t, TASKS["RTE"].template, [long, "A short hypothesis"], causal=False, max_length=40,
                   truncate_head=True)
    excess = len(full.ids) - 40
    assert front.ids == full.ids[excess:] and front.position == full.position - excess
    assert front.ids[front.position] == t.mask_token_id and front.ids[-1] == t.sep_token_id
    with pytest.raises(PromptError, match="removes the mask.*raise --max_seq_length"):
        encode(t, TASKS["RTE"].template, [long, "A short hypothesis"], causal=False, max_length=20)
    with pytest.raises(PromptError, match="cutting its front to --max_seq_length 20 removes the mask"):
        encode(t, TASKS["trec"].template, [long], causal=False, max_length=20, truncate_head=True)


def test_a_causal_prompt_still_keeps_its_scored_position():
    t = make_tokenizer(merges=True)
    long = "word " * 200
    cut = encode(t, TASKS["SST-2"].template, [long], causal=True, max_length=40)
    assert len(cut.ids) == 40 and cut.cut and cut.ids[-len(enc(t, " It was")):] == enc(t, " It was")


def test_a_template_needs_exactly_one_mask():
    with pytest.raises(PromptError, match="exactly one"):
        encode(ROBERTA, "*cls**sent_0*", ["x"], causal=False, max_length=10)
