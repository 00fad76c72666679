"""`python -m qaexp.export checkpoint=RUN/checkpoint [quantize=int8]`: see qaexp.serving.export."""

from qaexp.serving.export import main

if __name__ == "__main__":
    main()
