from far.play.cli import main

main()
