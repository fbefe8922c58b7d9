"""Files in -> arrays: the Kaggle folder layout, label catalogues and splits, image decoding (JPEG, PNG, FITS), the
parallel decoder and its on-disk cache, labelled arrays for training, batches for a model, and synthetic data."""
