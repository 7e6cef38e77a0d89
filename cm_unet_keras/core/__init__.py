"""The ground floor every stage stands on: errors that name the file at
fault, and writes that a kill never leaves half done (files, folders, JSON).

Nothing here imports TensorFlow, Keras or another stage of the package
(numpy only).
"""
