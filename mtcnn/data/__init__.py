"""Training data: readers of annotated sets, labelled crops, hard-example mining, the packed
sample store and the resumable preparation runner."""
