"""Training data with the qwen2 template; see `jakiro.ge_data.ge_data` for the options."""

from .ge_data import main

if __name__ == "__main__":
    main("qwen2")
