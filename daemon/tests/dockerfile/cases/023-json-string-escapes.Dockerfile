FROM scratch
CMD ["echo", "a\"b", "tab\there", "\u00e9", "$HOME"]
