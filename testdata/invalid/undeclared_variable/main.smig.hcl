variable "psk" {
  type      = string
  sensitive = true
}

variable "count_web" {
  type = number
}
