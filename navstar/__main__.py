from navstar.cli import main

main()
