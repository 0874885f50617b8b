"""Stage 1, read and write Caffe's files: prototxt and caffemodel in, the same formats out.

``read`` (text nets of every schema generation, upgraded by ``upgrade`` while reading, so no later
stage sees two schemas; caffemodels decoded straight from the wire format by ``wire``), ``emit``
(current-format prototxt and caffemodel bytes), ``fsutil`` (atomic files and directories),
``fillers`` (random weights from a net's fillers) and ``caffe_pb2`` (generated from proto/).
"""
