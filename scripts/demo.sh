#!/usr/bin/env bash
# The main job end to end: train -> evaluate -> predict -> plot (curves, per-question RMSE, galleries).
# Data: $GZMORPH_DATA, else data/galaxy-zoo, else a synthetic Kaggle-layout set made by `gzmorph synth`.
set -euo pipefail
DATA=${GZMORPH_DATA:-}
if [ -z "$DATA" ] && [ -d data/galaxy-zoo ]; then DATA=data/galaxy-zoo; fi
RUN=runs/demo
if [ -z "$DATA" ]; then
  DATA=runs/demo-data
  echo "== no real data (set GZMORPH_DATA or put it in data/galaxy-zoo): making a synthetic set in $DATA"
  gzmorph synth "$DATA" --n 1200 --n-test 100 --workers 2
  TRAIN_ARGS=(--epochs 8)
  SPLIT=valid   # synthetic data has no splits.csv, hence no test split
else
  echo "== using data in $DATA"
  TRAIN_ARGS=(--epochs 3 --limit 2000)
  SPLIT=test
  [ -f "$DATA/splits.csv" ] || SPLIT=valid
fi
rm -rf "$RUN"
mkdir -p "$RUN"
TEST_IMAGES="$DATA/images_test_rev1"
echo "== predict with the model inside gzmorph, before training anything"
gzmorph predict "$TEST_IMAGES" -o "$RUN/pretrained.csv" --tta 8
gzmorph predict "$TEST_IMAGES" -o "$RUN/pretrained-named.csv" --interval 0.9   # named columns + 90 % intervals
if [ -f "$DATA/splits.csv" ]; then  # real data: how it scores on the test split it never saw
  gzmorph evaluate pretrained --data "$DATA" --split test --tta 8 --out "$RUN/pretrained"
fi
MODEL=${GZMORPH_DEMO_MODEL:-gznet}  # the default model; GZMORPH_DEMO_MODEL=seed-cnn for the report's CNN
echo "== train $MODEL"
gzmorph train --data "$DATA" --model "$MODEL" --out "$RUN" "${TRAIN_ARGS[@]}"
echo "== evaluate on the $SPLIT split"
gzmorph evaluate "$RUN" --data "$DATA" --split "$SPLIT" --tta 8
echo "== predict $TEST_IMAGES"
gzmorph predict "$RUN" "$TEST_IMAGES" -o "$RUN/submission.csv" --tta 8
echo "== plot"
gzmorph plot "$RUN"
gzmorph plot "$RUN" --gallery --data "$DATA" --split "$SPLIT" --n 12
echo
echo "Done. Everything is in $RUN/:"
echo "  config.json, best.safetensors, model.safetensors  the trained model and how it was made"
echo "  metrics.csv, learning_curves.png                  per-epoch train/valid loss and RMSE"
echo "  eval-$SPLIT.json, rmse_per_question_$SPLIT.png     RMSE overall and per question vs the train mean"
echo "  gallery_$SPLIT.png, gallery_${SPLIT}_worst.png      galaxies with true vs predicted answers; the worst ones"
echo "  submission.csv (+ .json)                          Kaggle-format predictions for $TEST_IMAGES"
echo "  pretrained.csv                                    the same images answered by the model inside gzmorph"
echo "  pretrained-named.csv                              the same, readable: bar_yes_fraction, tree_path, 90 % intervals"
if [ -f "$DATA/splits.csv" ]; then
  echo "  pretrained/eval-test.json                         the model inside gzmorph scored on the test split"
fi
echo
echo "Next: gzmorph serve $RUN   (a web page: drop a galaxy image, read the decision tree's answers)"
