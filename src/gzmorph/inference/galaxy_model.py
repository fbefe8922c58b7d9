"""A trained model for notebooks and scripts: answers and features of images as pandas DataFrames, in memory.

    >>> import numpy as np, gzmorph
    >>> model = gzmorph.load_model()          # the model inside gzmorph; or load_model("runs/gz")
    >>> model
    GalaxyModel(run='pretrained', model='gznet', crop 192 px -> 64 px, outputs: the 37 answers of the tree)
    >>> sky = np.random.default_rng(0).integers(0, 20, (424, 424, 3), np.uint8)   # any uint8 RGB picture, a PIL
    >>> # image, a file, a folder, or a list of them (a blank picture, of one value, is refused: it holds no galaxy)
    >>> table = model.predict([sky, sky], tta=8)
    >>> table.shape                           # one row per image; the columns of the named table (see the README)
    (2, 97)
    >>> list(table.columns[:5])
    ['tree_path', 'shape_answer', 'shape_reached', 'smooth_fraction', 'smooth_kaggle']
    >>> bool(np.allclose(table.filter(like="shape_").filter(like="_fraction").sum(axis=1), 1, atol=1e-5))
    True
    >>> model.predict(sky, columns="kaggle").columns[0]   # Kaggle's submission columns instead
    'Class1.1'
    >>> bars = model.predict(sky, tta=8, interval=0.9)    # + calibrated 90 % intervals on every answer
    >>> row = bars.iloc[0]
    >>> bool(row.bar_yes_kaggle_lower <= row.bar_yes_kaggle <= row.bar_yes_kaggle_upper)
    True
    >>> features = model.embed(sky)           # pooled features, for similarity and clustering
    >>> features.shape == (1, model.model.feature_dim)
    True

Files are read exactly as ``gzmorph predict`` reads them (JPEG, PNG, TIFF, FITS; see ``gzmorph.data.images``), so a
notebook and the command line give the same numbers for the same file. In-memory pictures go through the same
centre crop and resize; a JPEG file is decoded at reduced scale inside libjpeg, though, so the same galaxy given as
an already-decoded picture can differ from its file by up to about 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runs
from ..data.images import crop_resize, scale_16_bit
from ..data.inputs import collect_inputs
from ..errors import BadArgument, BadData, BadImage
from .answer_table import answer_frame
from .calibration import calibration_for
from .intervals import check_interval_options, intervals
from .predict import ImageStream
from .tta import check_tta, embed_array, predict_answers


def load_model(run: str | Path | None = None, which: str = "best", device: str = "auto",
               precision: str = "auto") -> "GalaxyModel":
    """The model of ``run`` (a run folder; default: the model inside gzmorph), ready to answer images.

    ``which``: "best" (lowest valid RMSE), "last", or a .safetensors file; ``precision``: auto | fp32 | bf16 (see
    ``gzmorph.precision``)."""
    from ..precision import pick_device

    return GalaxyModel(runs.load_model(run, which, pick_device(device), precision), runs.run_name(run))


@dataclass
class GalaxyModel:
    """A loaded run (``runs.LoadedModel``: ``model``, ``config``, ``prep``, ``policy``, ``sha256``, ``weights``) with
    ``predict`` and ``embed`` for anything that holds galaxy pictures."""

    loaded: runs.LoadedModel
    run: str

    def __getattr__(self, name: str):  # model, config, prep, policy, sha256, weights: those of the loaded run
        if name == "loaded":
            raise AttributeError(name)
        return getattr(self.loaded, name)

    def __repr__(self) -> str:
        task = runs.task_of(self.loaded.config)
        outputs = "the 37 answers of the tree" if task is None else ", ".join(task.output_names)
        prep = self.loaded.prep
        return (f"GalaxyModel(run={self.run!r}, model={self.loaded.config.model!r}, crop {prep.crop} px -> "
                f"{prep.size} px, outputs: {outputs})")

    def pixels(self, images, ids: Sequence | None = None, *, skip_bad: bool = False, workers: int = 1,
               recursive: bool = False) -> tuple[list, np.ndarray, list[tuple[str, str]]]:
        """What the model sees: (ids, (N, size, size, 3) uint8 pixels, skipped (file, why)). See :meth:`predict`
        for what ``images`` may be."""
        items = _as_items(images)
        if ids is not None and len(ids) != len(items):
            raise BadArgument(f"ids: {len(ids)} given for {len(items)} images")
        prep = self.loaded.prep
        out_ids, pixels, skipped = [], [], []
        for k, item in enumerate(items):
            if isinstance(item, (str, Path)):
                inputs = collect_inputs(item, recursive=recursive)
                if ids is not None and len(inputs) != 1:
                    raise BadArgument(f"ids: item {k} ({item}) holds {len(inputs)} images, but ids names one per item; "
                                      f"leave ids out (files are named by their GalaxyID) or list the files")
                # The command line's decoding and skip rules, in the API's words.
                stream = ImageStream(inputs.paths, prep, batch_size=256, workers=workers, skip_bad=skip_bad,
                                     listed_in='table.attrs["skipped"]', progress=False, skip_flag="skip_bad=True")
                try:
                    for rows, chunk in stream:
                        pixels.extend(chunk)
                        out_ids.extend(ids[k] if ids is not None else inputs.ids[i] for i in rows)
                except BadImage as e:
                    raise BadData(str(e)) from None
                skipped += stream.skipped
            else:
                try:
                    pixels.append(crop_resize(_as_picture(item, k), prep))
                except BadImage as e:  # a PIL image in a mode that is no galaxy picture (CMYK, LAB, ...)
                    raise BadArgument(f"image {k}: {e}") from None
                out_ids.append(ids[k] if ids is not None else k)
        if not pixels:
            raise BadData("none of the images could be read" if skipped else "no images given")
        seen: set = set()
        for name in out_ids:
            if name in seen:  # a table with one id twice cannot be joined back to a catalogue
                raise BadArgument(f"two images are named {name!r} (files with one GalaxyID in two folders?); name each "
                                  f"item with ids=[...]")
            seen.add(name)
        return out_ids, np.stack(pixels), skipped

    def predict(self, images, *, tta: int = 1, columns: str = "named", spread: bool = False,
                interval: float | None = None, calibration: str | Path | None = None, ids: Sequence | None = None,
                batch_size: int = 256, skip_bad: bool = False, workers: int = 1, recursive: bool = False):
        """The answers for ``images`` as a pandas DataFrame indexed by galaxy id.

        ``images``: a file or folder path (``recursive``: with its subfolders; or a .txt list of paths), a PIL image, a uint8 (or uint16) array of one
        picture (H, W, 3) / (H, W) or of many (N, H, W, 3), or a list mixing them. Files are named by their GalaxyID
        (the file name without its suffix); in-memory pictures by their position, unless ``ids`` names each item.

        ``columns``: "named" (per answer its ``_fraction`` of the volunteers asked and its ``_kaggle`` value, per
        question its most likely ``_answer`` and how many were ``_reached``, the most likely ``tree_path``) or "kaggle"
        (Kaggle's 37 ClassN.M columns). ``tta``: views averaged (1, 2, 4, 8, 16, 32); ``spread``: each answer's standard
        deviation over them too. ``interval`` (a level in (0, 1), e.g. 0.9): each answer's calibrated interval,
        ``<answer>_kaggle_lower`` and ``_upper`` (the run's calibration, or the file ``calibration``; the packaged
        model's is made with ``tta=8``). Skipped files (``skip_bad``) are listed in ``table.attrs["skipped"]``.
        """
        check_tta(tta)
        if columns not in ("named", "kaggle"):
            raise BadArgument(f"columns must be 'named' or 'kaggle', got {columns!r}")
        if spread and tta < 2:
            raise BadArgument("spread is the spread over the TTA views: give tta=8 (or 2, 4, 16, 32)")
        cal = None
        check_interval_options(interval, calibration)
        if interval is not None:
            if columns == "kaggle":
                raise BadArgument("intervals are columns of the named table: leave columns='named'")
            cal = calibration_for(self.run, self.loaded, tta, calibration)
            tta = cal.tta  # interval alone (tta=1): the calibration's views
        names, pixels, skipped = self.pixels(images, ids, skip_bad=skip_bad, workers=workers, recursive=recursive)
        need_spread = spread or cal is not None
        answers = predict_answers(self.loaded, pixels, batch_size, tta, spread=need_spread)
        values, sd = answers if need_spread else (answers, None)
        lower, upper = intervals(cal, values, sd, interval) if cal is not None else (None, None)
        table = answer_frame(values, names, columns=columns, task=runs.task_of(self.loaded.config),
                             output_names=runs.output_names(self.loaded.config), spread=sd if spread else None,
                             lower=lower, upper=upper)
        table = table.set_index(table.columns[0])
        table.attrs["skipped"] = skipped
        return table

    def embed(self, images, *, ids: Sequence | None = None, batch_size: int = 256, skip_bad: bool = False,
              workers: int = 1, recursive: bool = False):
        """The model's pooled features of ``images`` (as :meth:`predict` takes them), one row per galaxy: what
        ``gzmorph embed`` writes and ``gzmorph similar`` searches (compare rows by cosine similarity)."""
        import pandas as pd

        if not hasattr(self.loaded.model, "features"):
            raise BadData(f"{self.run}: its model has no pooled features to embed")
        names, pixels, skipped = self.pixels(images, ids, skip_bad=skip_bad, workers=workers, recursive=recursive)
        features, _ = embed_array(self.loaded.model, pixels, batch_size, self.loaded.policy)
        table = pd.DataFrame(features, index=pd.Index(names, name="GalaxyID"),
                             columns=[f"feature_{k}" for k in range(features.shape[1])])
        table.attrs["skipped"] = skipped
        return table


def _as_items(images) -> list:
    """A list of single images (paths, PIL images, one-picture arrays) from whatever was given."""
    from PIL import Image

    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    try:
        items = list(images)
    except TypeError:
        raise BadArgument(f"images: expected a path, a PIL image, an array or a list of them, got "
                          f"{type(images).__name__}") from None
    flat = []
    for item in items:
        if isinstance(item, np.ndarray) and item.ndim == 4:
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _as_picture(item, position: int):
    """A PIL image of one in-memory picture, read by the same rules as files (16-bit scaled by its full range)."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if not isinstance(item, np.ndarray):
        raise BadArgument(f"image {position}: expected a path, a PIL image or a numpy array, got {type(item).__name__}")
    if item.ndim == 3 and item.shape[-1] in (3, 4):
        item = item[..., :3]  # an alpha band is a mask, not light (as for files)
    elif item.ndim != 2:
        raise BadArgument(f"image {position}: an array of shape {item.shape}; give (H, W, 3) colour or (H, W) grey, "
                          f"or (N, H, W, 3) for many")
    if item.dtype == np.uint16:  # as 16-bit files are read: by the type's full range
        item = scale_16_bit(item)
    if item.dtype != np.uint8:
        raise BadArgument(f"image {position}: {item.dtype} pixels are ambiguous (display values in 0..1, or fluxes?); "
                          f"give uint8 (0..255) or uint16 pictures, or fluxes as a FITS file")
    return Image.fromarray(np.ascontiguousarray(item), "RGB" if item.ndim == 3 else "L")
