print("parallelizer")
