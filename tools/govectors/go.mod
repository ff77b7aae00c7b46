module govectors

go 1.19
