"""Model families: which components a checkpoint has and how to build tiny test versions of them."""
