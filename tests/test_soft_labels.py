"""Soft labels (distillation / pseudo-labels, ``data/soft_labels.py``): which galaxies a teacher's file adds, fills
or leaves out, and ``gzmorph train --soft-labels`` end to end."""

from __future__ import annotations

import numpy as np
import pytest

import gzmorph
from gzmorph import runs, tree
from gzmorph.data.images import Preprocess
from gzmorph.data.labelled import load_labelled
from gzmorph.data.soft_labels import add_soft_labels
from gzmorph.errors import GzmorphError
from helpers import cli_fails, tree_labels, write_catalogue, write_image, write_kaggle_folder

PREP = Preprocess(192, 32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Kaggle folder (12 labelled galaxies over train/valid/test, 4 partial ones), a folder of 5 unlabelled
    galaxies, and a teacher's file answering all 21 of them."""
    root = tmp_path_factory.mktemp("soft")
    folder = write_kaggle_folder(root / "data", n=12, seed=5, partial_rows=4)
    unlabelled = np.arange(900001, 900006)
    for k, gid in enumerate(unlabelled):
        write_image(root / "unlabelled" / f"{gid}.jpg", 160, seed=70 + k)
    ids = np.concatenate([folder.ids, folder.partial_ids, unlabelled])
    teacher = tree_labels(len(ids), seed=99)
    write_catalogue(root / "teacher.csv", ids, teacher)
    return folder, root, unlabelled, dict(zip(map(int, ids), teacher))


def _train_rows(folder, train_on_valid=False):
    sets = load_labelled(folder.root, PREP, ("train", "valid"), workers=1, progress=False)
    if train_on_valid:
        from gzmorph.data.labelled import LabelledImages

        return LabelledImages.concat([sets["train"], sets["valid"]])
    return sets["train"]


@pytest.mark.parametrize("train_on_valid", [False, True])
def test_teacher_answers_join_fill_and_never_reach_held_out_galaxies(world, train_on_valid):
    folder, root, unlabelled, teacher = world
    train = _train_rows(folder, train_on_valid)
    held = folder.ids_of("test") + ([] if train_on_valid else folder.ids_of("valid"))
    out, summary = add_soft_labels(train, root / "teacher.csv", root / "unlabelled", PREP,
                                   held_out_ids=np.array(held), labelled_ids=np.concatenate([folder.ids,
                                                                                             folder.partial_ids]),
                                   workers=1, progress=False)
    cat = out.catalogue
    assert not set(map(int, cat.ids)) & set(held), "a held-out galaxy was trained on"
    assert summary.n_held_out == len(held) and summary.n_new == len(unlabelled) and summary.n_other == 0
    assert len(out) == len(train) + len(unlabelled) and out.pixels.shape[0] == len(out)
    assert cat.mask.all(), "every answer is known once the teacher has filled the gaps"
    row = {int(g): r for r, g in enumerate(cat.ids)}
    # The volunteers' answers are never replaced: fully labelled rows keep theirs.
    for gid in train.catalogue.ids[train.catalogue.fully_labelled]:
        np.testing.assert_array_equal(cat.labels[row[int(gid)]], train.catalogue.labels[
            int(np.flatnonzero(train.catalogue.ids == gid)[0])])
    # A partial galaxy keeps its known answers and takes the teacher's for the others.
    known = train.catalogue.mask[np.isin(train.catalogue.ids, folder.partial_ids)][0]
    assert summary.n_filled == len(folder.partial_ids) and summary.n_answers_filled == 4 * int((~known).sum())
    for k, gid in enumerate(folder.partial_ids):
        got = cat.labels[row[int(gid)]]
        np.testing.assert_allclose(got[known], folder.partial_labels[k][known], atol=1e-6)
        np.testing.assert_allclose(got[~known], teacher[int(gid)][~known], atol=1e-6)
    # Unlabelled galaxies: the teacher's 37 answers and their own pictures.
    for gid in unlabelled:
        np.testing.assert_allclose(cat.labels[row[int(gid)]], teacher[int(gid)], atol=1e-6)
    assert out.pixels[row[int(unlabelled[0])]].std() > 0


def test_galaxies_outside_the_runs_train_rows_are_left_out_not_looked_for(world):
    folder, root, unlabelled, _ = world
    train = _train_rows(folder)
    few = train.catalogue.subset(np.arange(2))  # as --limit would leave it
    from gzmorph.data.labelled import LabelledImages

    out, summary = add_soft_labels(LabelledImages(few, train.pixels[:2]), root / "teacher.csv", root / "unlabelled",
                                   PREP, held_out_ids=np.array(folder.ids_of("test")),
                                   labelled_ids=np.concatenate([folder.ids, folder.partial_ids]), workers=1,
                                   progress=False)
    assert summary.n_other == len(train) + len(folder.ids_of("valid")) - 2
    assert len(out) == 2 + len(unlabelled)


def test_unlabelled_galaxies_need_their_folder(world):
    folder, root, _, _ = world
    with pytest.raises(GzmorphError, match="--soft-images"):
        add_soft_labels(_train_rows(folder), root / "teacher.csv", None, PREP, held_out_ids=np.zeros(0, np.int64),
                        labelled_ids=folder.ids, workers=1, progress=False)


def test_train_with_soft_labels_end_to_end(world, tmp_path, capsys):
    folder, root, unlabelled, _ = world
    run = gzmorph.train(gzmorph.TrainConfig(
        data=str(folder.root), out=str(tmp_path / "r"), model="seed-cnn", epochs=1, batch_size=8, threads=2,
        workers=1, soft_labels=str(root / "teacher.csv"), soft_images=str(root / "unlabelled")), progress=False)
    saved = runs.read_config(run)
    assert saved.soft_labels == str(root / "teacher.csv") and saved.soft_images == str(root / "unlabelled")
    assert len(runs.read_metrics(run)) == 1
    cli_fails(capsys, ["train", "--data", str(folder.root), "--out", str(tmp_path / "x"), "--soft-images", str(root)],
              "--soft-labels")
    with pytest.raises(GzmorphError, match="fine-tuning"):  # a user's own columns have no teacher file
        gzmorph.TrainConfig(labels="l.csv", images="d", soft_labels="t.csv").with_recipe({})


def test_a_teacher_file_must_answer_all_37(world, tmp_path):
    folder, root, _, _ = world
    write_catalogue(tmp_path / "half.csv", folder.ids[:3], tree_labels(3), tree.COLUMNS[:3])
    with pytest.raises(GzmorphError, match="all 37"):
        add_soft_labels(_train_rows(folder), tmp_path / "half.csv", root / "unlabelled", PREP,
                        held_out_ids=np.zeros(0, np.int64), labelled_ids=folder.ids, workers=1, progress=False)


def test_an_ensemble_teacher_writes_the_mean_of_its_runs(world, tmp_path):
    from gzmorph.inference.teacher import write_teacher_labels
    from gzmorph.data.catalogue import read_catalogue
    from helpers import make_fake_run

    _, root, unlabelled, _ = world
    a, b = (make_fake_run(tmp_path / name, "gznet", seed=s) for name, s in (("a", 1), ("b", 2)))
    one = [read_catalogue(write_teacher_labels([r], [root / "unlabelled"], tmp_path / f"{r.name}.csv", tta=2,
                                               device="cpu", workers=1, progress=False), require_all=True)
           for r in (a, b)]
    both = read_catalogue(write_teacher_labels([a, b], [root / "unlabelled"], tmp_path / "ab.csv", tta=2,
                                               device="cpu", workers=1, progress=False), require_all=True)
    assert sorted(map(int, both.ids)) == sorted(map(int, unlabelled))
    assert not np.allclose(one[0].labels, one[1].labels), "two different teachers should disagree somewhere"
    for cat in one:
        assert np.array_equal(cat.ids, both.ids)
    np.testing.assert_allclose(both.labels, (one[0].labels + one[1].labels) / 2, atol=2e-6)
