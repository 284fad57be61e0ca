from mnist_lightning.entry import main

if __name__ == "__main__":
    main()
