policy {
  parallelism = 2
}

policy {
  allow_insecure_transport = true
}
