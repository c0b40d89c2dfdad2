"""A student cut from its teacher starts each mapped layer as the teacher layer it is mapped to.

METHODS.md: in the papers the student (General TinyBERT) was distilled to match the teacher layers it
is mapped to, so its layer losses start small; a student cut from teacher layers 0, 2, 4 and mapped to
2, 4, 6 starts every layer one below its target. `pytest tests/test_alignment.py -s` prints the
per-layer figures at initialisation.
"""

import dataclasses

import pytest
import torch

from bench.api import DataConfig
from bench.data.batching import make_loader
from bench.data.domains import load_domain
from bench.grid.spec import Grid
from bench.models.classifier import ModelSpec, build_classifier, load_config, load_tokenizer, misaligned_layers
from bench.plugins import Registry, get_registry, make_plugin_manager
from bench.presets import PRESETS
from bench.settings import resolve_setting

MINILM = "pkg:all-MiniLM-L6-v2"
# every method that distils into intermediate layers, with the layers its default map reads
LAYER_METHODS = ("pkd", "tinybert", "minilm", "metakd", "hrkd", "hrkd-nohier", "hrkd-nograph")


CUT_PRESETS = [p for p in PRESETS.values() if p.student.copied_teacher_layers(p.teacher)]


@pytest.mark.parametrize("preset", [*CUT_PRESETS, resolve_setting("cpu", "amazon", student_layers=(1, 3, 5)),
                                    resolve_setting("cpu", "amazon", student_layers=(0, 1, 5))], ids=lambda p: p.name)
@pytest.mark.parametrize("method", LAYER_METHODS)
def test_every_mapped_student_layer_starts_as_its_target(preset, method, tmp_path):
    """The presets' cuts, and any cut `--student-layers` makes: the harness hands the method the layers its
    student copies, and the method's default map targets them."""
    # with the entry points the test setup leaves out: the hrkd family is a package of its own
    registry = Registry.build(make_plugin_manager(load_entry_points=True))
    if method not in registry.distillers:
        pytest.skip(f"{method} is not installed")
    grid = Grid(suite=registry.suite("amazon"), preset=preset, methods=[registry.distiller(method)],
                domains=["books", "dvd"], seeds=[1], data=DataConfig(str(tmp_path)), results_dir=str(tmp_path))
    distiller = grid.distiller(registry.distiller(method))
    distiller.extra_modules(load_config(preset.teacher), load_config(preset.student))
    mapped = distiller.mapped_layers()
    assert mapped, f"{method} records no layer map"
    assert misaligned_layers(preset.student, preset.teacher, mapped) == []
    copied = preset.student.copied_teacher_layers(preset.teacher)
    assert all(copied[m - 1] == g for m, g in mapped.items())
    if method == "minilm":
        assert mapped == {3: copied[-1]}
    elif method == "pkd":  # PKD-skip leaves the last layer to the logits
        assert mapped == dict(enumerate(copied[:-1], start=1))
    else:
        assert mapped == dict(enumerate(copied, start=1))


def test_a_student_of_another_model_keeps_the_uniform_map():
    tinybert = get_registry().distiller("tinybert")()
    preset = PRESETS["cpu-base"]  # an all-MiniLM-L6-v2 student of an all-mpnet-base-v2 teacher
    assert preset.student.copied_teacher_layers(preset.teacher) is None
    tinybert.extra_modules(load_config(preset.teacher), load_config(preset.student))
    assert tinybert.mapped_layers() == {m: 2 * m for m in range(1, 7)}


def test_a_student_cut_below_its_targets_is_found():
    student = ModelSpec(MINILM, init="truncate", layers=(0, 2, 4))
    teacher = ModelSpec(MINILM)
    assert student.copied_teacher_layers(teacher) == (1, 3, 5)
    assert misaligned_layers(student, teacher, {1: 2, 2: 4, 3: 6}) == [(1, 1, 2), (2, 3, 4), (3, 5, 6)]
    assert misaligned_layers(student, teacher, {1: 1, 2: 3, 3: 5}) == []
    # a student of another model, or a random one, copies no teacher layer
    assert ModelSpec("pkg:all-mpnet-base-v2", init="truncate", layers=(0,)).copied_teacher_layers(teacher) is None
    assert misaligned_layers(ModelSpec(MINILM, init="random", layers=(0, 1, 2)), teacher, {1: 2}) == []


def _layer_losses(teacher, student, layer_map, batch):
    """TinyBERT's attention-score MSE per mapped layer (its real loss, eval mode, no dropout)."""
    tinybert = get_registry().distiller("tinybert")({"layer_map": layer_map})
    tinybert.extra_modules(teacher.config, student.config)
    needs = frozenset({"logits", "hidden", "attentions"})
    with torch.no_grad():
        t, s = teacher(batch, needs), student(batch, needs)
    from bench.losses import attention_score_mse

    return [attention_score_mse(s.attention_scores[m - 1], t.attention_scores[g - 1], batch.attention_mask).item()
            for m, g in enumerate(tinybert.teacher_layers, start=1)]


@pytest.mark.slow
def test_aligned_cuts_start_with_small_attention_losses(data_dir):
    """On 32 Amazon books reviews, pretrained all-MiniLM-L6-v2 standing in for its fine-tuned self, TinyBERT's
    attention-score MSE at initialisation: both aligned settings (cut 1, 3, 5 under the map 2, 4, 6; cut 0, 2, 4
    under 1, 3, 5) start far below the misaligned one (cut 0, 2, 4 under 2, 4, 6), and the cut whose first layer
    sees the teacher's own input (0, 2, 4) lowest of all."""
    torch.manual_seed(0)
    rows = load_domain(get_registry().suite("amazon"), "books", dataclasses.replace(PRESETS["cpu"], max_train_rows=32),
                       DataConfig(str(data_dir)), 1.0)
    tokenizer = load_tokenizer(MINILM)
    batch = next(iter(make_loader(rows.tokenized("train", tokenizer), 32, tokenizer.pad_token_id, shuffle=False)))
    teacher = build_classifier(ModelSpec(MINILM), 2).eval()
    top = build_classifier(ModelSpec(MINILM, init="truncate", layers=(1, 3, 5)), 2).eval()
    bottom = build_classifier(ModelSpec(MINILM, init="truncate", layers=(0, 2, 4)), 2).eval()
    figures = {"cut 1,3,5 map 2,4,6": _layer_losses(teacher, top, [2, 4, 6], batch),
               "cut 0,2,4 map 1,3,5": _layer_losses(teacher, bottom, [1, 3, 5], batch),
               "cut 0,2,4 map 2,4,6 (misaligned)": _layer_losses(teacher, bottom, [2, 4, 6], batch)}
    for name, losses in figures.items():
        print(f"{name}: attention MSE per mapped layer {', '.join(f'{v:.2f}' for v in losses)}; sum {sum(losses):.2f}")
    top_sum, bottom_sum, misaligned = (sum(v) for v in figures.values())
    assert figures["cut 0,2,4 map 1,3,5"][0] < 1e-6  # its first layer is the teacher's first, on the same input
    assert top_sum < misaligned / 2 and bottom_sum < misaligned / 5
    assert bottom_sum < top_sum
