variable "motd" {
  type    = string
  default = <<EOT
Welcome to ${var.site}
