"""docs/OWN.md's commands, as the page gives them, on a folder of real Amazon reviews written in each file
format. Two things are swapped so that it runs in seconds: the default preset is `smoke`, and the page's
preset file is based on `smoke` with random tiny models; the commands and every other line are the page's."""

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from bench.api import DataConfig
from bench.cli import main
from bench.plugins import get_registry

PAGE = Path(__file__).resolve().parent.parent / "docs" / "OWN.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def write_domain(folder: Path, fmt: str, splits: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        path = folder / f"{split}.{fmt}"
        if fmt == "jsonl":
            path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8")
        else:
            with open(path, "w", newline="", encoding="utf-8") as f:
                out = csv.writer(f, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
                out.writerows([("text", "label"), *rows])


@pytest.fixture
def my_reviews(tmp_path, data_dir, monkeypatch):
    """my-reviews/ as the page draws it: books in jsonl, kitchen in csv without dev, movies (Amazon's dvd
    reviews) in tsv; 24 train, 8 dev and 8 test reviews each, real ones."""
    amazon = get_registry().suite("amazon")
    names = amazon.labels
    for domain, source, fmt, splits in (("books", "books", "jsonl", ("train", "dev", "test")),
                                        ("kitchen", "kitchen", "csv", ("train", "test")),
                                        ("movies", "dvd", "tsv", ("train", "dev", "test"))):
        rows = {}
        for split in splits:
            data = amazon.load(source, split, DataConfig(str(data_dir)))
            picked = data.select(range(24 if split == "train" else 8))
            rows[split] = [(t[:300], names[y]) for t, y in zip(picked["text_a"], picked["label"])]
        write_domain(tmp_path / "my-reviews" / domain, fmt, rows)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("bench.settings.DEFAULT_PRESET", "smoke")
    return tmp_path


def test_the_page_runs(my_reviews, capsys):
    (toml,) = blocks("toml")
    assert 'base = "cpu"' in toml
    toml = toml.replace('base = "cpu"', 'base = "smoke"')
    toml = re.sub(r'ref = "[^"]+"', 'ref = "random:tiny"', toml)
    (my_reviews / "my-setting.toml").write_text(toml)
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("python -m bench")]
    assert [c.split()[3] for c in commands] == ["data", "run", "run", "report"]
    outputs = []
    for command in commands:
        capsys.readouterr()
        assert main(shlex.split(command)[3:]) == 0, command
        outputs.append(capsys.readouterr().out)

    stats = outputs[0]
    for domain in ("books", "kitchen", "movies"):
        assert domain in stats
    runs = my_reviews / "outputs" / "runs" / "files:my-reviews"
    settings = sorted(p.name for p in runs.iterdir())
    assert len(settings) == 2 and settings[0].startswith("my-setting-")
    assert settings[1].startswith("smoke[student_train.epochs=10]-")
    for setting in settings:
        for method in ("kd", "tinybert"):
            assert sorted(p.name for p in (runs / setting / method).iterdir()) == ["books", "kitchen", "movies"]
    kd = json.loads((runs / settings[0] / "kd" / "kitchen" / "seed1.json").read_text())
    assert kd["suite"]["sizes"] == {"train": 22, "dev": 2, "test": 8}  # kitchen's dev: int(10% of 24) train rows, cut
    assert kd["suite"]["labels"] == ["negative", "positive"]
    assert kd["setting"]["max_len"] == 64 and kd["train"]["epochs"] == 10 and kd["teacher"]["ref"] == "random:tiny"
    assert kd["setting"]["source"] == "file my-setting.toml"
    trackers = my_reviews / "outputs" / "runs" / "trackers" / "files:my-reviews" / settings[1]
    assert sorted(p.name for p in (trackers / "kd").iterdir()) == ["books", "kitchen", "movies"]
    report = outputs[3]
    for setting in settings:
        assert f"## files:my-reviews ({setting} preset)" in report
