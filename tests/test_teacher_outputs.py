"""The teacher-output cache: rows kept without padding, read back re-padded, equal to the live teacher's
outputs on every real position; per-domain caches; folders that survive processes, corruption and
other identities; and, through the CLI, runs that agree with and without it."""

import json
import logging

import pytest
import torch

from bench.api import DataConfig
from bench.cli import main
from bench.data.batching import Collator, tokenize
from bench.data.domains import load_domain
from bench.models.classifier import ModelSpec, build_classifier, load_tokenizer
from bench.plugins import get_registry
from bench.presets import get_preset
from bench.teachers.outputs import (
    CachedTeacher,
    TeacherOutputCache,
    cache_identity,
    identity_key,
    list_caches,
    remove_caches_of,
    rows_digest,
)

NEEDS = frozenset({"logits", "hidden", "attentions", "values"})
LAYERS = 4  # random:tiny
FIELDS = ("hidden_states", "attention_scores", "attention_probs", "values")
MIN = torch.finfo(torch.float32).min


class Counting:
    """A teacher callable that counts its forwards."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, batch, needs):
        self.calls += 1
        return self.model(batch, needs)


@pytest.fixture(scope="module")
def rows(data_dir):
    """Tokenised training rows of Amazon books and dvd (max length 96: lengths from 14 to 96)."""
    suite = get_registry().suite("amazon")
    tok = load_tokenizer("random:tiny")
    out = {}
    for domain in ("books", "dvd"):
        data = load_domain(suite, domain, get_preset("smoke"), DataConfig(str(data_dir)), 1.0)
        out[domain] = tokenize(data.rows["train"], tok, 96, suite.domains).with_format(None)
    return out, Collator(tok.pad_token_id)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_classifier(ModelSpec("random:tiny"), 2).eval()


def batch_of(rows, domain, indices):
    data, collate = rows
    return collate([data[domain][i] for i in indices])


def identity(rows, domain="books", teacher_key="teacher0"):
    return cache_identity(teacher_key, "weights0", domain, rows_digest(rows[0][domain]), "fp32", "random:tiny")


def live(teacher, batch):
    with torch.no_grad():
        return teacher(batch, NEEDS)


def read_all(out):
    """Every output, layer by layer, materialised."""
    return {"logits": out.logits, **{f: [getattr(out, f)[j] for j in range(len(getattr(out, f)))] for f in FIELDS}}


def assert_real_parts_equal(got, want, batch, atol=1e-6):
    """`got` (cached, read back) equals `want` (the live teacher's) on every real position, and holds
    the padding value everywhere else."""
    lengths = batch.attention_mask.sum(-1).tolist()
    torch.testing.assert_close(got["logits"], want.logits, atol=atol, rtol=0)
    assert len(got["hidden_states"]) == LAYERS + 1 and all(len(got[f]) == LAYERS for f in FIELDS[1:])
    for f in FIELDS:
        for layer, (g, w) in enumerate(zip(got[f], getattr(want, f))):
            assert g.shape == w.shape and g.dtype == w.dtype == torch.float32, (f, layer)
            for i, n in enumerate(lengths):
                if f == "hidden_states":
                    torch.testing.assert_close(g[i, :n], w[i, :n], atol=atol, rtol=0)
                    assert (g[i, n:] == 0).all()
                elif f == "values":  # (heads, seq, head_dim)
                    torch.testing.assert_close(g[i, :, :n], w[i, :, :n], atol=atol, rtol=0)
                    assert (g[i, :, n:] == 0).all()
                else:  # (heads, query, key)
                    torch.testing.assert_close(g[i, :, :n, :n], w[i, :, :n, :n], atol=atol, rtol=0)
                    pad = MIN if f == "attention_scores" else 0.0
                    assert (g[i, :, n:, :] == pad).all() and (g[i, :, :, n:] == pad).all(), (f, layer, i)


def assert_live(got, want):
    """`got` is the live teacher's output itself, padding included (a batch the teacher ran on)."""
    assert torch.equal(got["logits"], want.logits)
    for f in FIELDS:
        assert len(got[f]) == len(getattr(want, f)) and all(torch.equal(g, w) for g, w in zip(got[f], getattr(want, f)))


def by_length(rows, domain="books"):
    """Row indices sorted by their number of tokens, and those numbers."""
    lengths = [len(ids) for ids in rows[0][domain]["input_ids"]]
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i)), lengths


# 1. exactness of a round trip -------------------------------------------------------------------

def test_outputs_read_back_equal_the_live_teachers_on_real_positions(rows, teacher, tmp_path):
    order, lengths = by_length(rows)
    short, long = order[0:8:2], [*order[9:18:3], order[40]]  # 4 short rows of distinct lengths, 4 long (one cut at 96)
    assert len({lengths[i] for i in short}) == 4 and max(lengths[i] for i in long) == 96
    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: TeacherOutputCache(identity(rows), root=tmp_path)}, LAYERS)
    a, c = batch_of(rows, "books", short), batch_of(rows, "books", long)

    for n, batch in enumerate((a, c), start=1):  # first sight: the teacher runs once per batch, outputs live
        first = read_all(cached(batch, NEEDS))
        cached.flush()
        assert counting.calls == n
        assert_live(first, live(teacher, batch))

    again = read_all(cached(a, NEEDS))
    assert counting.calls == 2 and cached.hits > 0  # served from the cache, no forward
    assert_real_parts_equal(again, live(teacher, a), a)
    assert again["attention_scores"][0].shape[-1] == a.input_ids.shape[1]

    # the same rows in a batch of another composition and width: two short rows (stored at a's width)
    # and a long one (stored at c's), in another order
    mixed = [long[1], short[3], short[0]]
    b = batch_of(rows, "books", mixed)
    assert a.input_ids.shape[1] < b.input_ids.shape[1] < c.input_ids.shape[1]
    got = read_all(cached(b, NEEDS))
    assert counting.calls == 2
    assert_real_parts_equal(got, live(teacher, b), b)
    assert got["attention_scores"][1].shape == (3, teacher.config.num_attention_heads) + (b.input_ids.shape[1],) * 2


def test_a_loss_that_ignores_padding_is_the_same_on_cached_outputs(rows, teacher, tmp_path):
    """What `reads_teacher_padding = False` promises: the loss on re-padded cached outputs is the loss
    on the live ones; tinybert with loss_padding reads the padding, so its loss there differs."""
    from bench.testing import STUDENT

    order, _ = by_length(rows)
    stored, served = order[0:24:3], [order[15], order[3], order[9]]  # served rows come back narrower
    cached = CachedTeacher(Counting(teacher), {0: TeacherOutputCache(identity(rows), root=tmp_path)}, LAYERS)
    read_all(cached(batch_of(rows, "books", stored), NEEDS))
    cached.flush()
    torch.manual_seed(1)
    student = build_classifier(STUDENT, 2).eval()
    batch = batch_of(rows, "books", served)
    assert batch.input_ids.shape[1] < batch_of(rows, "books", stored).input_ids.shape[1]
    registry = get_registry()
    for name, options, reads_padding in (("tinybert", {}, False), ("pkd", {}, False), ("minilm", {}, False),
                                         ("kd", {}, False), ("tinybert", {"loss_padding": True}, True)):
        distiller = registry.distiller(name)(options)
        assert distiller.reads_teacher_padding == reads_padding or distiller.needs <= {"logits"}
        distiller.domains = ("books",)
        distiller.extra_modules(teacher.config, student.config)
        with torch.no_grad():
            student_out = student(batch, distiller.needs)
            want = distiller.loss(batch, student_out, live(teacher, batch), distiller.stages[0])
            got = distiller.loss(batch, student_out, cached(batch, distiller.needs), distiller.stages[0])
        assert set(got) == set(want)
        same = all(torch.allclose(got[p], want[p], rtol=1e-5, atol=1e-7) for p in want)
        assert same != reads_padding, (name, options, {p: (got[p].item(), want[p].item()) for p in want})
    assert cached.teacher.calls == 1


# 2. the lazy per-layer fields ----------------------------------------------------------------------

def test_negative_indices_and_slices_of_the_layers(rows, teacher, tmp_path):
    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: TeacherOutputCache(identity(rows), root=tmp_path)}, LAYERS)
    batch = batch_of(rows, "books", [5, 1, 7])
    for _ in ("live", "cached"):
        out = cached(batch, NEEDS)
        assert len(out.hidden_states) == LAYERS + 1 and len(out.values) == LAYERS
        assert torch.equal(out.values[-1], out.values[LAYERS - 1])
        assert torch.equal(out.hidden_states[-LAYERS - 1], out.hidden_states[0])
        assert torch.equal(out.attention_scores[-2], out.attention_scores[2])
        tail = out.hidden_states[1:]
        assert len(tail) == LAYERS and all(torch.equal(t, out.hidden_states[j + 1]) for j, t in enumerate(tail))
        backwards = out.attention_probs[::-1]
        assert [torch.equal(t, out.attention_probs[LAYERS - 1 - j]) for j, t in enumerate(backwards)] == [True] * 4
        assert out.values[1:1] == () and len(list(out.values)) == LAYERS  # iteration stops at the end
        for bad in (LAYERS, -LAYERS - 1):
            with pytest.raises(IndexError):
                out.values[bad]
        with pytest.raises(IndexError):
            out.hidden_states[LAYERS + 1]
        cached.flush()
    assert counting.calls == 1
    want = live(teacher, batch)
    torch.testing.assert_close(out.values[-1][:, :, :4], want.values[-1][:, :, :4], atol=1e-6, rtol=0)


def test_fields_a_method_does_not_need_stay_none(rows, teacher, tmp_path):
    cached = CachedTeacher(Counting(teacher), {0: TeacherOutputCache(identity(rows), root=tmp_path)}, LAYERS)
    out = cached(batch_of(rows, "books", [0, 1]), frozenset({"logits", "hidden"}))
    assert out.attention_scores is None and out.attention_probs is None and out.values is None
    assert len(out.hidden_states) == LAYERS + 1


# 3. one cache per domain ---------------------------------------------------------------------------

def test_a_batch_of_two_domains_stores_each_row_in_its_own_domains_cache(rows, teacher, tmp_path):
    books, dvd = TeacherOutputCache(identity(rows), root=tmp_path), \
        TeacherOutputCache(identity(rows, "dvd"), root=tmp_path)
    assert books.folder != dvd.folder
    data, collate = rows
    # books rows 0-2 and dvd rows 0-2: the same row ids, other texts
    mixed = collate([data["books"][0], data["dvd"][0], data["books"][1], data["dvd"][1], data["books"][2],
                     data["dvd"][2]])
    assert mixed.domain_ids.tolist() == [0, 1] * 3 and mixed.row_ids.tolist() == [0, 0, 1, 1, 2, 2]
    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: books, 1: dvd}, LAYERS)
    first = read_all(cached(mixed, NEEDS))
    cached.flush()
    lengths = mixed.attention_mask.sum(-1).tolist()
    for cache, positions in ((books, [0, 2, 4]), (dvd, [1, 3, 5])):
        logits = cache.get("logits", [0, 1, 2])
        assert torch.equal(torch.stack(logits), first["logits"][positions])
        hidden = cache.get("hidden_states.2", [0, 1, 2])
        for value, i in zip(hidden, positions):  # each row's real tokens, at its own length
            assert torch.equal(value, first["hidden_states"][2][i, :lengths[i]])
        assert cache.get("logits", [3]) is None
    assert not torch.allclose(torch.stack(books.get("logits", [0, 1, 2])), torch.stack(dvd.get("logits", [0, 1, 2])))

    # each domain alone, and the two mixed in another order, come back from the cache
    for batch in (batch_of(rows, "books", [2, 0, 1]), batch_of(rows, "dvd", [1, 2]),
                  collate([data["dvd"][2], data["books"][2], data["books"][0], data["dvd"][0]])):
        assert_real_parts_equal(read_all(cached(batch, NEEDS)), live(teacher, batch), batch)
    assert counting.calls == 1

    # a dvd row no cache holds: the teacher runs on the batch, outputs live and now kept
    batch = collate([data["books"][1], data["dvd"][7]])
    assert_live(read_all(cached(batch, NEEDS)), live(teacher, batch))
    cached.flush()
    assert counting.calls == 2 and dvd.get("logits", [7]) is not None and books.get("logits", [7]) is None


# 4. the folder across processes, corruption, identities --------------------------------------------

def fill(rows, teacher, root, indices, ident=None):
    cache = TeacherOutputCache(ident or identity(rows), root=root)
    cached = CachedTeacher(Counting(teacher), {0: cache}, LAYERS)
    read_all(cached(batch_of(rows, "books", indices), NEEDS))
    cached.flush()
    return cache


def test_a_later_process_sees_what_an_earlier_one_wrote(rows, teacher, tmp_path):
    first = fill(rows, teacher, tmp_path, [0, 1, 2])
    (chunk,) = first.folder.glob("*.safetensors")
    assert not list(first.folder.glob("*.tmp*"))
    assert json.loads((first.folder / "cache.json").read_text()) == identity(rows)
    later = TeacherOutputCache(identity(rows), root=tmp_path)
    assert later.folder == first.folder
    for slot in ("logits", "hidden_states.0", "attention_scores.3", "values.1"):
        assert all(torch.equal(a, b) for a, b in zip(later.get(slot, [0, 1, 2]), first.get(slot, [0, 1, 2])))
    counting = Counting(teacher)
    batch = batch_of(rows, "books", [2, 0])
    assert_real_parts_equal(read_all(CachedTeacher(counting, {0: later}, LAYERS)(batch, NEEDS)),
                            live(teacher, batch), batch)
    assert counting.calls == 0
    # another teacher (or other rows) is another folder, empty
    other = TeacherOutputCache(identity(rows, teacher_key="teacher1"), root=tmp_path)
    assert other.folder != first.folder and other.get("logits", [0]) is None
    assert len(list_caches(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["truncated", "cut short by a byte", "not a chunk"])
def test_a_damaged_chunk_is_dropped_with_a_warning_and_its_rows_recomputed(rows, teacher, tmp_path, caplog, damage):
    folder = fill(rows, teacher, tmp_path, [3, 4]).folder
    (sound,) = folder.glob("*.safetensors")
    fill(rows, teacher, tmp_path, [0, 1, 2])
    (chunk,) = set(folder.glob("*.safetensors")) - {sound}
    data = chunk.read_bytes()
    chunk.write_bytes({"truncated": data[:len(data) // 2], "cut short by a byte": data[:-1],
                       "not a chunk": b"\x00" * 64}[damage])
    caplog.set_level(logging.WARNING, logger="bench.teachers.outputs")
    later = TeacherOutputCache(identity(rows), root=tmp_path)
    assert "dropping unreadable chunk" in caplog.text and chunk.name in caplog.text
    assert not chunk.exists()
    assert later.get("logits", [0]) is None and later.get("hidden_states.1", [1, 2]) is None
    assert later.get("logits", [3, 4]) is not None and sound.exists()  # the sound chunk stays
    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: later}, LAYERS)
    batch = batch_of(rows, "books", [1, 0, 2])
    assert_live(read_all(cached(batch, NEEDS)), live(teacher, batch))
    cached.flush()
    assert counting.calls == 1
    caplog.clear()
    again = TeacherOutputCache(identity(rows), root=tmp_path)
    assert "dropping" not in caplog.text
    assert_real_parts_equal(read_all(CachedTeacher(counting, {0: again}, LAYERS)(batch, NEEDS)),
                            live(teacher, batch), batch)
    assert counting.calls == 1


@pytest.mark.parametrize("meta", [{"format": 1, "teacher": "someone else's"}, "{not json"])
def test_a_folder_whose_cache_json_describes_another_identity_is_rebuilt(rows, teacher, tmp_path, caplog, meta):
    first = fill(rows, teacher, tmp_path, [0, 1])
    (first.folder / "cache.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    caplog.set_level(logging.WARNING, logger="bench.teachers.outputs")
    later = TeacherOutputCache(identity(rows), root=tmp_path)
    assert "does not describe this cache" in caplog.text
    assert not list(later.folder.glob("*.safetensors")) and later.get("logits", [0]) is None
    assert json.loads((later.folder / "cache.json").read_text()) == identity(rows)


def test_refresh_empties_the_folder(rows, teacher, tmp_path):
    first = fill(rows, teacher, tmp_path, [0, 1])
    fill(rows, teacher, tmp_path, [2, 3])
    assert len(list(first.folder.glob("*.safetensors"))) == 2
    assert TeacherOutputCache(identity(rows), root=tmp_path).get("logits", [0, 3]) is not None
    fresh = TeacherOutputCache(identity(rows), root=tmp_path, refresh=True)
    assert not list(fresh.folder.glob("*.safetensors")) and fresh.get("logits", [0]) is None
    assert json.loads((fresh.folder / "cache.json").read_text()) == identity(rows)
    counting = Counting(teacher)
    read_all(CachedTeacher(counting, {0: fresh}, LAYERS)(batch_of(rows, "books", [0, 1]), NEEDS))
    assert counting.calls == 1


def test_writing_stops_when_the_finished_cache_would_not_fit_on_the_disk(rows, teacher, tmp_path, caplog,
                                                                          monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    cache = TeacherOutputCache(identity(rows), root=tmp_path, rows_total=len(rows[0]["books"]))
    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: cache}, LAYERS)
    read_all(cached(batch_of(rows, "books", [0, 1]), NEEDS))
    cached.flush()  # plenty of room: written
    per_row = sum(p.stat().st_size for p in cache.folder.glob("*.safetensors")) / 2
    assert not cache.full
    # the rest (all rows but these) needs ~per_row * (rows - 2): report less free than that
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, int(per_row * 3)))
    caplog.set_level(logging.WARNING, logger="bench.teachers.outputs")
    batch = batch_of(rows, "books", [2, 3])
    read_all(cached(batch, NEEDS))
    cached.flush()  # this chunk is written, then the projection stops further writing
    assert cache.full and "no more is written" in caplog.text and "--teacher-cache off" in caplog.text
    chunks = set(cache.folder.glob("*.safetensors"))
    late = batch_of(rows, "books", [4, 5])
    assert_live(read_all(cached(late, NEEDS)), live(teacher, late))  # served live, exactly
    cached.flush()
    assert set(cache.folder.glob("*.safetensors")) == chunks  # nothing more written
    calls = counting.calls
    assert_real_parts_equal(read_all(cached(batch, NEEDS)), live(teacher, batch), batch)
    assert counting.calls == calls  # what is stored is still read


# 5, 6. through the runner and the CLI --------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, data_dir):
    """kd and tinybert with --teacher-cache off, tinybert reading teacher padding, then kd and tinybert
    twice with the cache, each into its own results dir, all on one fresh store."""
    store = tmp_path_factory.mktemp("store")
    outputs = store / "teacher-outputs"

    def folders():
        return sorted(p.name for p in outputs.iterdir() if p.is_dir()) if outputs.exists() else []

    def chunks():
        return sorted(p.name for p in outputs.rglob("*.safetensors"))

    base = ["run", "--suite", "amazon", "--preset", "smoke", "--domains", "books", "--data-dir", str(data_dir)]
    plan = [("off", ["--methods", "kd,tinybert", "--teacher-cache", "off"]),
            ("padding", ["--methods", "tinybert", "--option", "tinybert.loss_padding=true"]),
            ("use", ["--methods", "kd,tinybert"]),
            ("again", ["--methods", "kd,tinybert"])]
    results, seen = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(store))
        for name, args in plan:
            results[name] = tmp_path_factory.mktemp(name)
            assert main([*base, *args, "--results-dir", str(results[name])]) == 0, name
            seen[name] = (folders(), chunks())
    return store, results, seen


def result(results, method, label=None):
    return json.loads((results / "amazon" / "smoke" / (label or method) / "books" / "seed1.json").read_text())


def test_runs_with_and_without_the_cache_agree(cli_runs):
    _, results, _ = cli_runs
    for method in ("kd", "tinybert"):
        off, use, again = (result(results[name], method) for name in ("off", "use", "again"))
        for r, mode in ((off, "off"), (use, "use"), (again, "use")):
            assert r["teacher"]["cache"] == mode
        assert off["teacher"]["key"] == use["teacher"]["key"] == again["teacher"]["key"]
        for r in (use, again):
            assert r["metrics"]["accuracy"] == off["metrics"]["accuracy"], method
            assert r["train"]["selected_step"] == off["train"]["selected_step"], method
            assert r["train"]["best_dev_accuracy"] == off["train"]["best_dev_accuracy"], method
            assert len(r["train"]["history"]) == len(off["train"]["history"]) == 4
            for h, h_off in zip(r["train"]["history"], off["train"]["history"]):
                assert set(h) == set(h_off) and h["step"] == h_off["step"]
                assert h["dev_accuracy"] == h_off["dev_accuracy"], (method, h["step"])
                for part in set(h) - {"step", "dev_accuracy"}:
                    assert h[part] == pytest.approx(h_off[part], rel=1e-3), (method, part, h["step"])
    padding = result(results["padding"], "tinybert", "tinybert[loss_padding=true]")
    assert padding["teacher"]["cache"] == "use" and padding["method"]["config"]["loss_padding"] is True


def test_only_runs_that_may_use_the_cache_fill_it(cli_runs):
    _, results, seen = cli_runs
    assert seen["off"] == ([], [])  # --teacher-cache off
    assert seen["padding"] == ([], [])  # tinybert reading the teacher's padding never uses it
    (folder,) = seen["use"][0]  # kd and tinybert share one cache: same teacher, same rows
    # 6 batches a method whose outputs were needed for the first time: kd's logits, then tinybert's layers
    assert len(seen["use"][1]) == 12
    assert seen["again"] == seen["use"]  # the second pass found every output it read


def test_cache_ls_and_clear(cli_runs, monkeypatch, capsys, rows, teacher):
    store, results, seen = cli_runs
    monkeypatch.setenv("BENCH_CACHE_DIR", str(store))
    assert main(["cache", "ls"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header, table = [c.strip() for c in lines[0].split("|")[1:-1]], lines[2:]
    assert len(table) == 1
    row = dict(zip(header, (c.strip() for c in table[0].split("|")[1:-1])))
    assert row["key"] == seen["use"][0][0] and row["domain"] == "books" and row["precision"] == "fp32"
    assert row["teacher"] == result(results["use"], "kd")["teacher"]["key"] and row["chunks"] == "12"

    # two more caches: one removed by its key's prefix, then all
    extra = [TeacherOutputCache(identity(rows, teacher_key=k)).folder for k in ("x1", "x2")]
    assert main(["cache", "clear", "nosuchkey"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: no cached teacher outputs with a key starting 'nosuchkey'",
                                "  see `python -m bench cache ls` for the keys"]
    assert len(list_caches()) == 3
    assert main(["cache", "clear", extra[0].name[:8]]) == 0
    assert capsys.readouterr().out.startswith("removed 1 teacher-output cache(s)")
    assert not extra[0].exists() and extra[1].exists() and len(list_caches()) == 2
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 teacher-output cache(s)")
    assert list_caches() == [] and not list((store / "teacher-outputs").iterdir())
    assert main(["cache", "ls"]) == 0
    assert "no teacher outputs cached in" in capsys.readouterr().out


def test_a_forward_on_a_miss_keeps_only_the_layers_losses_read(rows, teacher, tmp_path):
    """Once a loss has read some layers, a batch that misses the cache keeps those from the forward
    and drops the rest; a layer read for the first time after that runs the forward again."""
    import gc
    import weakref

    counting = Counting(teacher)
    cached = CachedTeacher(counting, {0: TeacherOutputCache(identity(rows), root=tmp_path)}, LAYERS)
    first = cached(batch_of(rows, "books", [0, 1]), NEEDS)
    first.attention_scores[1], first.hidden_states[2]  # what this method's loss reads
    cached.flush()

    forwards = []
    counting.model = lambda batch, needs: forwards.append(teacher(batch, needs)) or forwards[-1]
    batch = batch_of(rows, "books", [2, 3])
    out = cached(batch, NEEDS)  # a miss: rows 2, 3 are new
    assert counting.calls == 2
    unread = weakref.ref(forwards[0].attention_scores[0])
    kept = out.attention_scores[1]
    want = live(teacher, batch)
    forwards.clear()
    gc.collect()
    assert unread() is None  # the layers no loss read are gone
    assert torch.equal(kept, want.attention_scores[1]) and torch.equal(out.hidden_states[2], want.hidden_states[2])
    assert torch.equal(out.attention_scores[3], want.attention_scores[3])  # first read: the forward again
    assert counting.calls == 3


def test_a_batchs_new_outputs_are_written_before_the_student_forward_and_first_reads_at_the_next_step(
        data_dir, teacher, tmp_path):
    """Written after the student's forward, a chunk's copies would coincide with the student's graph.
    What the cached teacher fetched when called is written before the student's forward; what a loss
    reads for the first time (tinybert's layers, on its first batch) when the next batch comes or
    when asked (after training)."""
    from bench.data.batching import make_loader
    from bench.grid.runner import Runner
    from bench.grid.spec import Grid
    from bench.teachers.store import StoredTeacher
    from bench.testing import STUDENT

    registry = get_registry()
    tinybert = registry.distiller("tinybert")
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[tinybert], domains=["books"],
                seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(tmp_path / "results"))
    runner = Runner(grid, registry)
    runner.teachers.outputs_root = tmp_path / "outputs"
    tok = runner.ctx.student_tokenizer
    b1, b2 = list(make_loader(runner.ctx.data("books").tokenized("train", tok), 8, tok.pad_token_id, shuffle=False))[:2]
    student = build_classifier(STUDENT, 2)
    distiller = grid.distiller(tinybert)
    distiller.domains = ("books",)
    distiller.extra_modules(teacher.config, student.config)

    def chunks():
        return len(list(runner.teachers.outputs_root.rglob("*.safetensors")))

    at_student = []

    def counted(batch, needs):
        at_student.append(chunks())
        return student(batch, needs)

    compute_loss = runner.student_forward(distiller, counted, {"books": StoredTeacher("t0", teacher, {}, False, None)})
    compute_loss(b1, "main")
    assert at_student == [1] and chunks() == 1  # b1's logits; its layers wait for the next batch
    compute_loss.flush_outputs()  # as after training
    assert chunks() == 2
    compute_loss(b2, "main")
    assert at_student == [1, 3] and chunks() == 3  # all of b2's, before its student forward
    compute_loss.flush_outputs()
    assert chunks() == 3


def test_the_key_changes_with_everything_the_outputs_depend_on(rows):
    """Another teacher (or its weights), domain, rows, precision or tokenizer gives another folder."""
    base = dict(teacher_key="teacher0", weights="weights0", domain="books", rows=rows_digest(rows[0]["books"]),
                precision="fp32", tokenizer="random:tiny")
    changes = {"teacher_key": "teacher1", "weights": "weights1", "domain": "dvd",
               "rows": rows_digest(rows[0]["books"].select(range(5))), "precision": "bf16",
               "tokenizer": "pkg:all-MiniLM-L6-v2"}
    keys = {identity_key(cache_identity(**base))} | {
        identity_key(cache_identity(**(base | {name: value}))) for name, value in changes.items()}
    assert len(keys) == 1 + len(changes)
    assert identity_key(cache_identity(**base)) == identity_key(cache_identity(**dict(base)))  # and only with them


def test_teachers_under_one_store_key_with_other_weights_get_other_caches(data_dir, teacher, tmp_path):
    """The store key hashes a teacher's configuration, not its weights: one trained again under the same
    key (after `teacher rm`, or with other floating-point results) must not read the other's outputs."""
    import copy

    from bench.grid.runner import Runner
    from bench.grid.spec import Grid
    from bench.teachers.store import StoredTeacher

    registry = get_registry()
    grid = Grid(suite=registry.suite("amazon"), preset=get_preset("smoke"), methods=[registry.distiller("kd")],
                domains=["books"], seeds=[1], data=DataConfig(str(data_dir)), results_dir=str(tmp_path / "results"))
    runner = Runner(grid, registry)
    runner.teachers.outputs_root = tmp_path / "outputs"

    def folder(model):
        view = runner.teachers.cached_view(model, {"books": StoredTeacher("t0", model, {}, False, None)}, "books")
        return view.caches[0].folder

    retrained = copy.deepcopy(teacher)
    with torch.no_grad():
        retrained.heads[0].weight[0, 0] += 1e-6  # one weight, in its last digits
    assert folder(copy.deepcopy(teacher)) == folder(teacher)  # the same weights: the same cache
    assert folder(retrained) != folder(teacher)
    assert len(list_caches(runner.teachers.outputs_root)) == 2


def test_removing_a_teacher_removes_its_cached_outputs(rows, teacher, tmp_path):
    gone, kept = (fill(rows, teacher, tmp_path, [0, 1], identity(rows, teacher_key=k)) for k in ("t-old", "t-other"))
    size = sum(p.stat().st_size for p in gone.folder.iterdir())
    assert remove_caches_of("t-old", tmp_path) == (1, size)
    assert not gone.folder.exists() and kept.folder.exists()
    assert remove_caches_of("t-old", tmp_path) == (0, 0)
