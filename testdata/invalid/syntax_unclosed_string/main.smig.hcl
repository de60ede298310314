subnet "app" {
  cidr = "192.168.10.0/24
}
