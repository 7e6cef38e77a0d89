"""The study's unlabeled pretraining pool never holds a test split (issue 31)."""

from pathlib import Path

from cm_unet_keras.experiments.data import study_data, unlabeled_pool

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "recipes" / "xca_split.json"


def test_pretraining_pool_takes_arcade_train_and_val_and_never_test(shared_data):
    train, holdout = study_data(shared_data, SPLIT)
    pool = unlabeled_pool(shared_data, train)
    stenosis = Path(shared_data) / "arcade_stenosis"
    arcade = [Path(r.image_path).relative_to(stenosis) for r in pool if stenosis in Path(r.image_path).parents]
    assert sorted({path.parts[0] for path in arcade}) == ["train", "val"]
    assert len(arcade) == len(list((stenosis / "train" / "images").glob("*.png"))) + len(
        list((stenosis / "val" / "images").glob("*.png"))) == 1200
    assert not any("test" in Path(r.image_path).relative_to(shared_data).parts for r in pool)
    # The XCA training angiograms come without masks; the holdout stays out.
    cimat = {Path(r.image_path) for r in pool} - {Path(r.image_path) for r in pool if stenosis in Path(r.image_path).parents}
    assert cimat == {Path(r.image_path) for r in train} and len(pool) == 1230
    assert not cimat & {Path(r.image_path) for r in holdout}
