"""A trained run -> answers: test-time augmentation, evaluation on a labelled split, predictions for a folder of
images (sharded and merged), ONNX export, the web page, and figures."""
