"""Training data with the llama3 template; see `jakiro.ge_data.ge_data` for the options."""

from .ge_data import main

if __name__ == "__main__":
    main("llama3")
