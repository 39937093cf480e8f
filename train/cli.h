/* cli: the subcommands of the ctune binary. Each takes the arguments after its name,
 * prints its own --help, reports errors on stderr and returns the process exit status. */
#ifndef CTUNE_CLI_H
#define CTUNE_CLI_H

int cmd_train(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_prep(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_merge(int argc, char **argv);

#endif
