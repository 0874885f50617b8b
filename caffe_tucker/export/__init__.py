"""Export to other formats than Caffe's own: ONNX (:mod:`caffe_tucker.export.onnx`)."""
