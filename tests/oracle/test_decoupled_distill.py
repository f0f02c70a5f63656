"""python/decoupled distillation's targets and python/distill_minilm.py's held-out separation.

1. The teacher streams distillation matches (the stream entering layer 0 and after every layer, taken
   with forward hooks) are transformers' own `output_hidden_states` (tiny random BERT and LLaMA).
2. A P = 1 conversion is the original: with state_mse (every segment's output against the teacher's
   stream there) its end-to-end loss is 0 and its held-out cosine 1 before any step.
3. A P = 2 BERT student distilled for a few steps with state_mse improves its held-out cosine to the
   teacher, and the report records the weight and (eval_every) the held-out curve, ending at the final cosine.
4. distill_minilm's extra training sentences never contain a held-out sentence, even written with
   other case, spacing or punctuation; nor does its training text when --held-out names the held-out file.
5. TeacherCache's targets, assembled from per-sequence rows kept across batches of other lengths, are
   transformers' own output for that batch at every unpadded position; a distillation with the cache
   follows the same loss curve as one without.
6. distill_minilm --resume takes a checkpoint of the same decoupled layout (the distilled P = 2 one,
   whose held-out cosine the next distill then starts from) and refuses one of another layout,
   naming the bp setting that differs.

Runs as a script or under pytest; a few seconds."""
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))
import decoupled  # noqa: E402

dd = sys.modules["decoupled.distill"]  # the module (the package's name `distill` is its function)

TMP = tempfile.mkdtemp(prefix="lowsync_distill_")
TEXTS = [f"Sentence number {i} talks about {w} and how the {w} of a thing is measured." for i, w in
         enumerate(["weight", "length", "colour", "speed", "price", "age", "size", "shape"] * 6)]


def models():
    """Tiny random originals with lowsync's byte vocabulary (257), so distillation needs no tokenizer files."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    ms = {"bert": BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                       intermediate_size=64, vocab_size=257, max_position_embeddings=96)),
          "llama": LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                num_attention_heads=4, num_key_value_heads=2, vocab_size=257,
                                                max_position_embeddings=96, tie_word_embeddings=False))}
    with torch.no_grad():  # wide weights: a default-initialised BERT embeds every sentence alike
        for n, p in ms["bert"].named_parameters():
            if p.dim() == 2 and "embeddings" not in n:
                p.normal_(0, 0.3)
    for name, m in ms.items():
        m.eval().save_pretrained(os.path.join(TMP, name), safe_serialization=True)
    return ms


def test_teacher_states_are_transformers_hidden_states():
    for family, m in models().items():
        ids = torch.randint(3, 257, (2, 9))
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        _, states = dd._teacher_with_states(m, family, ids, mask)
        with torch.no_grad():
            kw = {"token_type_ids": torch.zeros_like(ids)} if family == "bert" else {}
            want = m(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kw).hidden_states
        # transformers' last LLaMA hidden state is after the final norm; the hook's is the layer's output
        n = len(want) if family == "bert" else len(want) - 1
        assert len(states) == len(want), (family, len(states), len(want))
        worst = max(float((states[i] - want[i]).abs().max()) for i in range(n))
        print(f"{family}: {n} teacher streams vs transformers hidden_states: max |diff| {worst:.1e}")
        assert worst < 1e-5


def test_p1_state_loss_zero_and_distilled_p2_improves():
    models()
    src = os.path.join(TMP, "bert")
    p1 = os.path.join(TMP, "bert_P1")
    decoupled.convert(src, p1, 1, 2)
    rep = decoupled.distill(src, p1, os.path.join(TMP, "bert_P1_out"), TEXTS[:40], 1, lr=0.0, eval_texts=TEXTS[40:],
                            state_mse=1.0, log=lambda *_: None)
    print(f"P=1 before any step: {rep['before']}, end-to-end loss {rep['phases'][-1]['final_loss']:.1e}")
    assert rep["before"]["mean_cosine"] > 1 - 1e-5 and rep["phases"][-1]["final_loss"] < 1e-6
    p2 = os.path.join(TMP, "bert_P2")
    decoupled.convert(src, p2, 2, 1)
    rep = decoupled.distill(src, p2, os.path.join(TMP, "bert_P2_out"), TEXTS[:40], 30, lr=3e-3, batch_size=8,
                            eval_texts=TEXTS[40:], state_mse=1.0, eval_every=10, log=lambda *_: None)
    print(f"P=2 k=1: held-out mean cosine {rep['before']['mean_cosine']:.4f} -> {rep['after']['mean_cosine']:.4f}")
    assert rep["state_mse"] == 1.0 and rep["after"]["mean_cosine"] > rep["before"]["mean_cosine"] + 0.01
    curve = rep["phases"][-1]["curve"]  # eval_every: held-out fidelity at steps 10, 20, 30, the last the final one
    print(f"curve: {[(c['step'], round(c['mean_cosine'], 4)) for c in curve]}")
    assert [c["step"] for c in curve] == [10, 20, 30] and abs(curve[-1]["mean_cosine"] - rep["after"]["mean_cosine"]) < 1e-6
    check_resume_takes_same_layout_only(src, p2, os.path.join(TMP, "bert_P2_out"), rep["after"]["mean_cosine"])


def check_resume_takes_same_layout_only(src, converted, distilled, distilled_cosine):
    import distill_minilm
    student = distill_minilm.resumed_student(distilled, converted)
    rep = decoupled.distill(src, student, os.path.join(TMP, "bert_P2_resumed"), TEXTS[:40], 1, lr=0.0, batch_size=8,
                            eval_texts=TEXTS[40:], log=lambda *_: None)
    print(f"resumed: starts at {rep['before']['mean_cosine']:.4f} (distilled {distilled_cosine:.4f})")
    assert abs(rep["before"]["mean_cosine"] - distilled_cosine) < 1e-6
    other = os.path.join(TMP, "bert_P2_k2")
    decoupled.convert(src, other, 2, 2)
    try:
        distill_minilm.resumed_student(distilled, other)
    except SystemExit as e:
        print(f"refused: {e}")
        assert "bp.sync_every is 1" in str(e) and "converts to 2" in str(e), str(e)
    else:
        raise AssertionError("a checkpoint of another layout was resumed")


def test_teacher_cache_is_the_teachers_output():
    for family, m in models().items():
        cache = dd.TeacherCache(m, family)
        torch.manual_seed(1)
        pool = [torch.randint(3, 257, (n,)).tolist() for n in (4, 9, 6, 12, 7)]
        for batch in ([pool[0], pool[1]], [pool[2], pool[0], pool[3]], [pool[1], pool[4], pool[2]]):
            ids, mask = dd._pad(batch)
            got = cache(batch)
            with torch.no_grad():
                kw = {"token_type_ids": torch.zeros_like(ids)} if family == "bert" else {}
                out = m(input_ids=ids, attention_mask=mask, **kw)
                want = out.last_hidden_state if family == "bert" else out.logits
            m3 = mask.bool()
            worst = float((got[m3] - want[m3]).abs().max())
            assert got.shape == want.shape and worst < 1e-4, (family, got.shape, want.shape, worst)
        print(f"{family}: cached teacher rows vs transformers on 3 batches: max |diff| {worst:.1e}, "
              f"{len(cache.rows)} sequences kept")
        assert len(cache.rows) == 5
    src = os.path.join(TMP, "bert")
    p2 = os.path.join(TMP, "bert_P2_cache")
    decoupled.convert(src, p2, 2, 1)
    reps = [decoupled.distill(src, p2, os.path.join(TMP, f"bert_P2_cache_{c}"), TEXTS[:40], 12, lr=3e-3, batch_size=8,
                              eval_texts=TEXTS[40:], cache_teacher=c, log=lambda *_: None) for c in (False, True)]
    a, b = (r["after"]["mean_cosine"] for r in reps)
    print(f"12 steps without / with the teacher cache: held-out cosine {a:.6f} / {b:.6f}")
    assert abs(a - b) < 1e-4 and a > reps[0]["before"]["mean_cosine"] + 0.01


def test_more_sentences_leave_out_held_out():
    import distill_minilm
    held = ["The quick brown fox jumps over the lazy dog near the river bank.",
            "Licensed under the Apache License, Version 2.0 (the license) you may not use this file."]
    path = os.path.join(TMP, "extra.txt")
    with open(path, "w") as f:
        f.write("THE QUICK BROWN FOX jumps over the lazy dog, near the river bank! "
                "Licensed under the Apache License Version 2.0 (the License); you may not use this file. "
                "An unrelated sentence of ten words that should stay in the text.\n")
    got = distill_minilm.more_sentences(0, [path], held)
    print(f"extra sentences kept: {got}")
    assert got == ["An unrelated sentence of ten words that should stay in the text."]
    held_file = os.path.join(TMP, "held.txt")
    with open(held_file, "w") as f:
        f.write("".join(s + "\n" for s in held))
    sents = ["the quick brown fox jumps over the lazy dog near the river bank"] + held + TEXTS[:10]
    train, got_held, near = distill_minilm.split_text(sents, 4, held_file)
    print(f"--held-out file: {len(got_held)} held out, {len(train)} train, near-duplicates removed: {near}")
    assert got_held == held and sorted(train) == sorted(TEXTS[:10]) and len(near) == 1
    for bad, want in ((os.path.join(TMP, "no_such.txt"), "No such file"), (path + ".empty", "no sentences")):
        open(path + ".empty", "w").close()
        try:
            distill_minilm.split_text(sents, 4, bad)
        except SystemExit as e:
            print(f"refused: {e}")
            assert str(e).startswith(f"--held-out {bad}: ") and want in str(e), str(e)
        else:
            raise AssertionError(f"--held-out {bad} was accepted")


if __name__ == "__main__":
    test_teacher_states_are_transformers_hidden_states()
    test_p1_state_loss_zero_and_distilled_p2_improves()
    test_teacher_cache_is_the_teachers_output()
    test_more_sentences_leave_out_held_out()
    print("decoupled distillation: all passed")
