/* The pod sandbox's process, as Kubernetes' build/pause/linux/pause.c: hold the pod's
 * namespaces, reap orphaned children, exit on SIGINT or SIGTERM.
 * Built by tests/cluster/node.sh with `gcc -static` into the image localhost/crane-pause. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction quit = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (getpid() != 1) return 1; /* only as a container's PID 1 */
  if (sigaction(SIGINT, &quit, NULL) < 0 || sigaction(SIGTERM, &quit, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0)
    return 2;
  for (;;) pause();
}
