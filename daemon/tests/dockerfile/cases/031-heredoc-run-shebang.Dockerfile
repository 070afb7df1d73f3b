FROM python:3.6
RUN <<EOT
#!/usr/bin/env python
print("hello world")
EOT
