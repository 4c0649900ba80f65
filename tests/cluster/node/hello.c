/* A tiny HTTP server for the real node's checks (tests/cluster/smoke.sh): answers every
 * request on port 8080 (or argv[1]) with "You've hit <hostname>"; logs one line when it
 * listens; exits at once on SIGTERM or SIGINT. Built by tests/cluster/node.sh with
 * `gcc -static` into the image localhost/crane-hello:1. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 8080, one = 1, s, n, len;
  char host[256] = {0}, body[320], reply[512], request[4096];
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_ANY)}};

  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  gethostname(host, sizeof host - 1);
  n = snprintf(body, sizeof body, "You've hit %s\n", host);
  len = snprintf(reply, sizeof reply,
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", n, body);
  s = socket(AF_INET, SOCK_STREAM, 0);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 64) < 0) {
    perror("hello: listen");
    return 1;
  }
  printf("hello: listening on %d as %s\n", port, host);
  fflush(stdout);
  for (;;) {
    int c = accept(s, NULL, NULL);
    if (c < 0) continue;
    if (read(c, request, sizeof request) > 0 && write(c, reply, len) < 0) perror("hello: write");
    close(c);
  }
}
