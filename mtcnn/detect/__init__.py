"""Face detection: the cascade (:class:`~mtcnn.detect.cascade.MTCNN`), image inputs and files."""
