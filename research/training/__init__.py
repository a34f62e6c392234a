"""The parts of a training run, one concern a module; `research.train` puts them in order.

- `data`: the Kaggle-layout folder -> preprocessed arrays (and lesion masks), the split;
- `augment`: random geometry and intensity on model-frame tensors (tf.data map);
- `lesion_supervision`: the auxiliary lesion-map head, its targets and loss;
- `precision`: mixed bfloat16 or float32;
- `schedule`: the learning rate, the time budget, the phases of progressive resizing.
"""
