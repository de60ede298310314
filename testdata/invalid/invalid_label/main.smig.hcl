vm {
  address = "192.168.10.11"
}

subnet "app.db" {
  cidr = "192.168.10.0/24"
}

policy "default" {
  parallelism = 2
}
